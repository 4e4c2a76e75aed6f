//! Checked, resumable downloads: a file goes to `<name>.part`, resumes with an HTTP `Range`
//! request after an interruption, and is renamed to its name only when complete and verified.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use md5::Md5;
use sha2::{Digest, Sha256};

use crate::datasets::{Checksum, host};

/// Connections that do not open within this fail (the whole fetch must fail fast offline).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that delivers nothing for this long counts as interrupted.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Tries per file: the first request and this many minus one resumptions.
const ATTEMPTS: usize = 4;

/// The HTTP client of every download.
pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout_read(READ_TIMEOUT)
        .build()
}

/// The MD5 and SHA-256 of a file, hex.
pub fn digests(path: &Path) -> Result<(String, String)> {
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (mut md5, mut sha) = (Md5::new(), Sha256::new());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        md5.update(&buf[..n]);
        sha.update(&buf[..n]);
    }
    Ok((hex(&md5.finalize()), hex(&sha.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks `path` against `checksum` (`recorded`: the SHA-256 recorded at a first download, for
/// files without a known checksum). Returns the file's SHA-256.
pub fn verify(path: &Path, checksum: &Checksum, recorded: Option<&str>) -> Result<String> {
    let (md5, sha) = digests(path)?;
    let (kind, want, got) = match (checksum, recorded) {
        (Checksum::Md5(want), _) => ("md5", want.as_str(), &md5),
        (Checksum::Sha256(want), _) => ("sha256", want.as_str(), &sha),
        (Checksum::Record, Some(want)) => ("recorded sha256", want, &sha),
        (Checksum::Record, None) => return Ok(sha),
    };
    if !want.eq_ignore_ascii_case(got) {
        bail!(
            "{} does not match its {kind}: expected {want}, got {got}",
            path.display()
        )
    }
    Ok(sha)
}

/// `<path>.part`.
pub fn part_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// What went wrong with one request.
enum Failure {
    /// The host could not be reached at all (no network, DNS, refused): no point retrying.
    Unreachable(String),
    /// The transfer broke off after it started: resume.
    Interrupted(String),
    /// Anything else (HTTP errors, local I/O): fail.
    Fatal(anyhow::Error),
}

/// Downloads `url` to `dest.part`, resuming what an earlier attempt left there, until it is
/// complete. Does not verify or rename.
pub fn download(agent: &ureq::Agent, url: &str, dest: &Path, label: &str) -> Result<()> {
    let part = part_path(dest);
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            eprintln!("{label}: {last}; resuming");
        }
        match request(agent, url, &part, label) {
            Ok(()) => return Ok(()),
            Err(Failure::Unreachable(e)) => bail!(
                "cannot reach {} ({e}).\n  Without network: download the files by hand (their URLs: \
                 `cargo xtask fetch-data --list`) into a folder DIR and run \
                 `cargo xtask fetch-data --from DIR`; behind a proxy or with a local copy: \
                 `--mirror URL` (or D2A_DATA_MIRROR)",
                host(url)
            ),
            Err(Failure::Interrupted(e)) => last = e,
            Err(Failure::Fatal(e)) => return Err(e),
        }
    }
    Err(anyhow!(
        "{label}: the download from {url} broke off {ATTEMPTS} times ({last}); run the command \
         again to resume from {}",
        part.display()
    ))
}

fn request(agent: &ureq::Agent, url: &str, part: &Path, label: &str) -> Result<(), Failure> {
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let Some(resp) = connect(agent, url, have)? else {
        // The part file already holds everything.
        return Ok(());
    };
    let resumed = resp.status() == 206;
    if resumed {
        check_resumes_at(&resp, url, have)?;
    }
    let length: Option<u64> = resp.header("Content-Length").and_then(|l| l.parse().ok());
    let offset = if resumed { have } else { 0 };
    let got = copy_body(resp, part, resumed, label, (offset, length))?;
    if let Some(length) = length
        && got < length
    {
        return Err(Failure::Interrupted(format!(
            "connection closed after {} of {} bytes",
            offset + got,
            offset + length
        )));
    }
    Ok(())
}

/// The response to a GET of `url` (from byte `have` on, if any), or `None` when the server
/// says there is nothing after it.
fn connect(agent: &ureq::Agent, url: &str, have: u64) -> Result<Option<ureq::Response>, Failure> {
    let mut req = agent.get(url);
    if have > 0 {
        req = req.set("Range", &format!("bytes={have}-"));
    }
    match req.call() {
        Ok(resp) => Ok(Some(resp)),
        Err(ureq::Error::Status(416, _)) if have > 0 => Ok(None),
        Err(ureq::Error::Status(code, resp)) => Err(Failure::Fatal(anyhow!(
            "{url}: HTTP {code} {}",
            resp.status_text()
        ))),
        Err(ureq::Error::Transport(t)) => Err(match t.kind() {
            ureq::ErrorKind::Dns
            | ureq::ErrorKind::ConnectionFailed
            | ureq::ErrorKind::InvalidProxyUrl
            | ureq::ErrorKind::ProxyConnect => Failure::Unreachable(t.to_string()),
            _ if have == 0 => Failure::Unreachable(t.to_string()),
            _ => Failure::Interrupted(t.to_string()),
        }),
    }
}

/// A 206 answer must continue where the part file ends ("bytes START-END/TOTAL").
fn check_resumes_at(resp: &ureq::Response, url: &str, have: u64) -> Result<(), Failure> {
    let start = resp
        .header("Content-Range")
        .and_then(|r| r.strip_prefix("bytes "))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.trim().parse::<u64>().ok());
    if start != Some(have) {
        return Err(Failure::Fatal(anyhow!(
            "{url}: asked to resume at byte {have}, the server answered {:?}",
            resp.header("Content-Range")
        )));
    }
    Ok(())
}

/// Writes the body to `part` (appended when `resumed`) with a progress bar from `offset` of
/// `offset + length`; returns the bytes received.
fn copy_body(
    resp: ureq::Response,
    part: &Path,
    resumed: bool,
    label: &str,
    (offset, length): (u64, Option<u64>),
) -> Result<u64, Failure> {
    let cannot_write =
        |e: io::Error| Failure::Fatal(anyhow!("cannot write {}: {e}", part.display()));
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(part)
        .map_err(cannot_write)?;
    let bar = progress_bar(label, length.map(|l| l + offset));
    bar.set_position(offset);
    let mut reader = resp.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                bar.abandon();
                return Err(Failure::Interrupted(format!(
                    "connection lost after {} bytes ({e})",
                    offset + got
                )));
            }
        };
        file.write_all(&buf[..n]).map_err(cannot_write)?;
        got += n as u64;
        bar.set_position(offset + got);
    }
    file.sync_all().map_err(cannot_write)?;
    bar.finish();
    Ok(got)
}

/// Bytes, rate and time left; hidden when stderr is not a terminal.
pub fn progress_bar(label: &str, total: Option<u64>) -> ProgressBar {
    let bar = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::no_length(),
    };
    let template = "{msg:24} {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} {eta}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_message(label.to_string());
    bar
}
