//! `cargo xtask` end to end, never touching the network: a server on 127.0.0.1 started here
//! serves archives built here (small NIfTI volumes in the upstream layouts), with a checksum
//! manifest override; and weight conversion on the shared PyTorch fixture.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ndarray::Array3;
use sha2::{Digest, Sha256};

fn xtask(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(args).env_remove("D2A_DATA_MIRROR");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("xtask runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A request the server saw: its path and `Range` header.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// An HTTP/1.1 server on 127.0.0.1 serving `files` by path, honouring `Range: bytes=N-`. The
/// first full request of each path in `cut` gets half its body, then the connection closes.
struct Server {
    base: String,
    seen: Seen,
}

fn serve(files: HashMap<String, Vec<u8>>, cut: &[&str]) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let cut: Arc<Mutex<HashSet<String>>> =
        Arc::new(Mutex::new(cut.iter().map(|s| s.to_string()).collect()));
    let files = Arc::new(files);
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (files, cut, log) = (files.clone(), cut.clone(), log.clone());
            std::thread::spawn(move || answer(stream, &files, &cut, &log));
        }
    });
    Server { base, seen }
}

fn answer(
    mut stream: TcpStream,
    files: &HashMap<String, Vec<u8>>,
    cut: &Mutex<HashSet<String>>,
    log: &Seen,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    reader.read_line(&mut request).unwrap();
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    log.lock().unwrap().push((path.clone(), range.clone()));
    let Some(body) = files.get(&path) else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let start: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse().ok())
        .unwrap_or(0);
    if range.is_some() {
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
            body.len() - start,
            body.len() - 1,
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&body[start..]);
        return;
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    if cut.lock().unwrap().remove(&path) {
        let _ = stream.write_all(&body[..body.len() / 2]);
        let _ = stream.flush();
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return;
    }
    let _ = stream.write_all(body);
}

/// A `.nii.gz` volume of `x * y * z` voxels, as bytes.
fn nifti_gz(dir: &Path, vol: &Array3<f32>) -> Vec<u8> {
    let path = dir.join("volume.nii.gz");
    nifti::writer::WriterOptions::new(&path)
        .write_nifti(vol)
        .unwrap();
    std::fs::read(path).unwrap()
}

/// An HU volume of `z` slices with a square lesion on the even ones, and its mask.
fn pair(dir: &Path, z: usize, label: f32) -> (Vec<u8>, Vec<u8>) {
    let mut img = Array3::<f32>::from_elem((16, 16, z), -900.0);
    let mut msk = Array3::<f32>::zeros((16, 16, z));
    for k in (0..z).step_by(2) {
        for i in 4..9 {
            for j in 5..10 {
                img[[i, j, k]] = -100.0;
                msk[[i, j, k]] = label;
            }
        }
    }
    (nifti_gz(dir, &img), nifti_gz(dir, &msk))
}

fn zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut writer = zip::ZipWriter::new(&mut out);
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in entries {
        writer.start_file(name.as_str(), options).unwrap();
        writer.write_all(bytes).unwrap();
    }
    writer.finish().unwrap();
    out.into_inner()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The six upstream files, small, served at their upstream paths; and a checksum manifest for
/// them (the Radiopaedia archives left to "record", as upstream publishes no checksum).
struct Upstream {
    files: HashMap<String, Vec<u8>>,
    manifest: PathBuf,
}

fn upstream(dir: &Path) -> Upstream {
    let (medseg_im, medseg_mask) = pair(dir, 6, 3.0);
    let rp: Vec<(Vec<u8>, Vec<u8>)> = (0..2).map(|_| pair(dir, 4, 2.0)).collect();
    let cases: Vec<(Vec<u8>, Vec<u8>)> = (0..3).map(|_| pair(dir, 4, 1.0)).collect();
    // A zip of the image (`mask == false`) or mask volumes of `vols`, named by `name(i)`.
    let archive = |vols: &[(Vec<u8>, Vec<u8>)], mask: bool, name: &dyn Fn(usize) -> String| {
        let entries: Vec<(String, Vec<u8>)> = vols
            .iter()
            .enumerate()
            .map(|(i, (im, msk))| (name(i + 1), if mask { msk } else { im }.clone()))
            .collect();
        zip(&entries)
    };
    let rp_im = archive(&rp, false, &|i| format!("rp_im/{i}.nii.gz"));
    let rp_msk = archive(&rp, true, &|i| format!("rp_msk/{i}.nii.gz"));
    let cases_zip = archive(&cases, false, &|i| format!("coronacases_{i:03}.nii.gz"));
    let masks_zip = archive(&cases, true, &|i| {
        format!("Infection_Mask/coronacases_{i:03}.nii.gz")
    });
    let files: HashMap<String, Vec<u8>> = [
        ("/files/25953977", medseg_im),
        ("/files/25953980", medseg_mask),
        ("/files/25954007", rp_im),
        ("/files/25954013", rp_msk),
        (
            "/records/3757476/files/COVID-19-CT-Seg_20cases.zip",
            cases_zip,
        ),
        ("/records/3757476/files/Infection_Mask.zip", masks_zip),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let manifest = dir.join("checksums.json");
    let sum = |path: &str| serde_json::json!({ "sha256": sha256(&files[path]) });
    let json = serde_json::json!({
        "tr_im.nii.gz": { "md5": format!("{:x}", md5_of(&files["/files/25953977"])) },
        "tr_mask.nii.gz": sum("/files/25953980"),
        "rp_im.zip": "record",
        "rp_msk.zip": "record",
        "COVID-19-CT-Seg_20cases.zip": sum("/records/3757476/files/COVID-19-CT-Seg_20cases.zip"),
        "Infection_Mask.zip": sum("/records/3757476/files/Infection_Mask.zip"),
    });
    std::fs::write(&manifest, json.to_string()).unwrap();
    Upstream { files, manifest }
}

fn md5_of(bytes: &[u8]) -> md5::digest::Output<md5::Md5> {
    md5::Md5::digest(bytes)
}

/// `fetch-data --data DATA --checksums <the fixture manifest>` plus `extra`.
fn fetch(data: &Path, up: &Upstream, extra: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut args = vec![
        "fetch-data",
        "--data",
        data.to_str().unwrap(),
        "--checksums",
        up.manifest.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    xtask(&args, envs)
}

fn manifest_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn fetches_checks_and_prepares_all_three_datasets() {
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream(tmp.path());
    let server = serve(up.files.clone(), &[]);
    let data = tmp.path().join("data");
    let args = ["--mirror", &server.base, "--size", "32"];
    let out = fetch(&data, &up, &args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    for name in [
        "tr_im.nii.gz",
        "tr_mask.nii.gz",
        "rp_im.zip",
        "rp_msk.zip",
        "COVID-19-CT-Seg_20cases.zip",
        "Infection_Mask.zip",
    ] {
        assert!(data.join("raw").join(name).is_file(), "{name}");
        assert!(!data.join("raw").join(format!("{name}.part")).exists());
    }
    // The archives without a published checksum had theirs recorded.
    let recorded: HashMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(data.join("raw/checksums.json")).unwrap())
            .unwrap();
    assert_eq!(recorded["rp_im.zip"], sha256(&up.files["/files/25954007"]));
    // Train = Radiopaedia (2 volumes) + Ma et al. (3 volumes), lesion slices only (2 of 4 each);
    // test = MedSeg, every slice kept.
    let train = manifest_json(&data.join("prepared/train"));
    assert_eq!(train["n_volumes"], 5, "{train}");
    assert_eq!(train["n_slices_total"], 20);
    assert_eq!(train["n_slices_kept"], 10);
    let test = manifest_json(&data.join("prepared/test"));
    assert_eq!(test["n_volumes"], 1);
    assert_eq!(test["n_slices_kept"], 6);

    // A second run checks what is there and downloads nothing.
    let before = server.seen.lock().unwrap().len();
    let out = fetch(&data, &up, &args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.seen.lock().unwrap().len(), before);
    assert!(stderr(&out).contains("checksum verified"));
}

#[test]
fn a_download_cut_halfway_resumes_with_a_range_request() {
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream(tmp.path());
    let path = "/records/3757476/files/Infection_Mask.zip";
    let server = serve(up.files.clone(), &[path]);
    let data = tmp.path().join("data");
    let out = fetch(
        &data,
        &up,
        &["--only", "covid20", "--size", "32", "--no-prepare"],
        &[("D2A_DATA_MIRROR", &server.base)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("resuming"), "{}", stderr(&out));
    let seen = server.seen.lock().unwrap().clone();
    let half = up.files[path].len() / 2;
    let requests: Vec<&Option<String>> = seen
        .iter()
        .filter(|(p, _)| p == path)
        .map(|(_, r)| r)
        .collect();
    assert_eq!(
        requests,
        [&None, &Some(format!("bytes={half}-"))],
        "{seen:?}"
    );
    assert_eq!(
        std::fs::read(data.join("raw/Infection_Mask.zip")).unwrap(),
        up.files[path]
    );
    // --only fetched nothing else.
    assert!(!data.join("raw/tr_im.nii.gz").exists());
}

#[test]
fn a_checksum_mismatch_fails_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream(tmp.path());
    let mut files = up.files.clone();
    files.get_mut("/files/25953980").unwrap()[100] ^= 0xff;
    let server = serve(files, &[]);
    let data = tmp.path().join("data");
    let out = fetch(
        &data,
        &up,
        &["--only", "medseg", "--mirror", &server.base],
        &[],
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("tr_mask.nii.gz") && err.contains("sha256"),
        "{err}"
    );
    let raw = data.join("raw");
    assert!(!raw.join("tr_mask.nii.gz").exists());
    assert!(!raw.join("tr_mask.nii.gz.part").exists());
    assert!(!data.join("prepared").exists());
}

#[test]
fn files_from_a_folder_are_checked_like_downloads() {
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream(tmp.path());
    let from = tmp.path().join("by-hand");
    std::fs::create_dir_all(&from).unwrap();
    std::fs::write(from.join("tr_im.nii.gz"), &up.files["/files/25953977"]).unwrap();
    std::fs::write(from.join("tr_mask.nii.gz"), &up.files["/files/25953980"]).unwrap();
    let data = tmp.path().join("data");
    let out = fetch(
        &data,
        &up,
        &[
            "--only",
            "medseg",
            "--from",
            from.to_str().unwrap(),
            "--size",
            "32",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        manifest_json(&data.join("prepared/test"))["n_slices_kept"],
        6
    );
    // Without the checksum override the real MedSeg md5 rejects these files.
    let out = xtask(
        &[
            "fetch-data",
            "--data",
            tmp.path().join("d2").to_str().unwrap(),
            "--only",
            "medseg",
            "--from",
            from.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("md5"), "{}", stderr(&out));
}

#[test]
fn without_network_it_fails_fast_and_names_the_host_and_from() {
    // A port nothing listens on: the connection is refused at once.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let out = xtask(
        &[
            "fetch-data",
            "--data",
            tmp.path().to_str().unwrap(),
            "--mirror",
            &format!("http://127.0.0.1:{port}"),
        ],
        &[],
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(start.elapsed() < Duration::from_secs(30));
    assert!(
        err.contains(&format!("cannot reach 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("--from DIR"), "{err}");
}

fn fixtures() -> Option<PathBuf> {
    d2a_tests::shared_fixture("resnext_tiny.pth").and_then(|p| p.parent().map(Path::to_path_buf))
}

fn read_all(path: &Path) -> HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap()
}

fn bytes(t: &candle_core::Tensor) -> Vec<u8> {
    let mut out = Vec::new();
    t.write_bytes(&mut out).unwrap();
    out
}

#[test]
fn convert_weights_from_pth_equals_the_pytorch_safetensors() {
    let Some(fixtures) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = xtask(
        &[
            "convert-weights",
            "--model",
            "resnext_tiny",
            "--from",
            fixtures.join("resnext_tiny.pth").to_str().unwrap(),
            "--out",
            tmp.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let ours = read_all(&tmp.path().join("resnext_tiny.safetensors"));
    let reference: HashMap<_, _> = read_all(&fixtures.join("resnext_tiny.safetensors"))
        .into_iter()
        .filter(|(k, _)| !k.starts_with("fc."))
        .collect();
    let mut keys: Vec<&String> = ours.keys().collect();
    keys.sort();
    let mut want: Vec<&String> = reference.keys().collect();
    want.sort();
    assert_eq!(keys, want);
    for (k, t) in &reference {
        assert_eq!(ours[k].dtype(), t.dtype(), "{k}");
        assert_eq!(bytes(&ours[k]), bytes(t), "{k}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let sha = sha256(&std::fs::read(tmp.path().join("resnext_tiny.safetensors")).unwrap());
    assert!(stdout.contains(&sha), "{stdout}");
}

#[test]
fn convert_weights_reads_the_hub_cache_offline_and_rejects_other_models() {
    let Some(fixtures) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // The standard cache layout, as a first online run leaves it.
    let repo = tmp.path().join("hf/hub/models--local--resnext-tiny");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots/abc123")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc123").unwrap();
    std::fs::copy(
        fixtures.join("resnext_tiny.safetensors"),
        repo.join("snapshots/abc123/model.safetensors"),
    )
    .unwrap();
    let hf_home = tmp.path().join("hf");
    let envs = [
        ("HF_HOME", hf_home.to_str().unwrap()),
        ("HF_ENDPOINT", "http://127.0.0.1:9"),
    ];
    let out_dir = tmp.path().join("weights");
    let out = xtask(
        &[
            "convert-weights",
            "--model",
            "resnext_tiny",
            "--repo",
            "local/resnext-tiny",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &envs,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out_dir.join("resnext_tiny.safetensors").is_file());
    // The tiny checkpoint is not a ResNeXt-50: every missing key class is named.
    let out = xtask(
        &[
            "convert-weights",
            "--from",
            fixtures.join("resnext_tiny.pth").to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &[],
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("missing layer1.1."), "{err}");
    assert!(err.contains("mis-shaped"), "{err}");
    assert!(!out_dir.join("resnext50_32x4d.safetensors").exists());
}

#[test]
fn list_prints_every_file_offline() {
    // `--list` prints every file with its URL, checksum and licence, offline.
    let out = xtask(&["fetch-data", "--list"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in [
        "tr_im.nii.gz",
        "25953977",
        "54f82e3a9ac01bf6cc2300ca53d820ae",
        "CC BY-NC-SA",
        "rp_msk.zip",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
}

/// Full-size torchvision checkpoints are not in `shared/`: where `D2A_TORCHVISION_DIR` holds
/// `resnext50_32x4d.pth` and `resnet101.pth` (torchvision `state_dict`s) with
/// `<name>_io.safetensors` (an input and torchvision's `layer1..4` outputs in eval mode), both are
/// converted, counted, and run through our encoder.
#[test]
#[ignore = "needs D2A_TORCHVISION_DIR with full torchvision checkpoints (run with --ignored)"]
fn full_torchvision_checkpoints_convert_load_and_match() {
    let dir = std::env::var_os("D2A_TORCHVISION_DIR")
        .map(PathBuf::from)
        .expect("D2A_TORCHVISION_DIR must name the folder of full torchvision checkpoints");
    use d2a_model::encoders::{ResNeXt, ResNeXtConfig};
    let tmp = tempfile::tempdir().unwrap();
    for (name, cfg, tensors) in [
        ("resnext50_32x4d", ResNeXtConfig::resnext50_32x4d(), 318),
        ("resnet101", ResNeXtConfig::resnet101(), 624),
    ] {
        let pth = dir.join(format!("{name}.pth"));
        let out = xtask(
            &[
                "convert-weights",
                "--model",
                name,
                "--from",
                pth.to_str().unwrap(),
                "--out",
                tmp.path().to_str().unwrap(),
            ],
            &[],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let converted = tmp.path().join(format!("{name}.safetensors"));
        assert_eq!(read_all(&converted).len(), tensors, "{name}");
        let varmap = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(
            &varmap,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        );
        let net = ResNeXt::new(&cfg, vb).unwrap();
        let report = d2a_model::checkpoint::load_exact(&varmap, &converted, "", &[]).unwrap();
        assert!(report.missing.is_empty(), "{name}: {report}");
        let io = read_all(&dir.join(format!("{name}_io.safetensors")));
        let feats = net.features(&io["input"], false).unwrap();
        for i in 1..5 {
            let want = &io[&format!("e{i}")];
            let diff = (&feats[i] - want)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let scale = want
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            eprintln!("{name} e{i}: max |diff| {diff:e} (max |value| {scale})");
            assert!(diff <= 1e-4 * scale.max(1.0), "{name} e{i}: {diff}");
        }
    }
    // The D2A U-Net loads the converted ResNeXt-50 as its encoder, nothing missing.
    let cfg = d2a_model::ModelConfig::by_name("d2a-resnext50").unwrap();
    let varmap = candle_nn::VarMap::new();
    d2a_model::Model::new(
        &cfg,
        candle_nn::VarBuilder::from_varmap(
            &varmap,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        ),
    )
    .unwrap();
    let report = d2a_model::checkpoint::load_exact(
        &varmap,
        &tmp.path().join("resnext50_32x4d.safetensors"),
        "encoder.",
        &[],
    )
    .unwrap();
    assert_eq!(report.loaded, 265);
}
