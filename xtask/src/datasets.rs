//! The paper's three datasets (SPEC §3): where each file lives upstream and how it is checked
//! (facts from `shared/docs/datasets.md`).

use serde::{Deserialize, Serialize};

/// How a downloaded file is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Checksum {
    /// A known MD5 (hex).
    Md5(String),
    /// A known SHA-256 (hex).
    Sha256(String),
    /// None known: the SHA-256 of the first download is recorded and checked afterwards.
    Record,
}

/// One upstream file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// The file name, also its name in `data/raw/`.
    pub name: &'static str,
    /// Where it is downloaded from.
    pub url: &'static str,
    /// How it is checked.
    pub checksum: Checksum,
}

/// What a dataset is used for (SPEC §3: split by dataset, never by slice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Training (and validation) data.
    Train,
    /// The test set.
    Test,
}

/// One dataset: its files and how to pair images with masks.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The name `--only` takes.
    pub name: &'static str,
    /// What the paper calls it.
    pub title: &'static str,
    /// Its licence, as the README states it.
    pub licence: &'static str,
    /// Train or test.
    pub role: Role,
    /// The image file (a NIfTI volume or a zip of volumes).
    pub images: RemoteFile,
    /// The matching mask file.
    pub masks: RemoteFile,
}

fn md5(hex: &str) -> Checksum {
    Checksum::Md5(hex.to_string())
}

fn sha256(hex: &str) -> Checksum {
    Checksum::Sha256(hex.to_string())
}

/// The three datasets, in the paper's order.
pub fn all() -> Vec<Dataset> {
    vec![
        Dataset {
            name: "medseg",
            title: "MedSeg COVID-19 CT segmentation dataset: 100 axial slices (test)",
            licence: "free use, acknowledgment appreciated (medicalsegmentation.com/covid19)",
            role: Role::Test,
            images: RemoteFile {
                name: "tr_im.nii.gz",
                url: "https://ndownloader.figshare.com/files/25953977",
                checksum: md5("54f82e3a9ac01bf6cc2300ca53d820ae"),
            },
            masks: RemoteFile {
                name: "tr_mask.nii.gz",
                url: "https://ndownloader.figshare.com/files/25953980",
                checksum: md5("d11996de45d06d332658115d8b3cf6fc"),
            },
        },
        Dataset {
            name: "medseg-rp",
            title: "MedSeg Radiopaedia: 9 volumes, 829 slices (train)",
            licence: "free use, acknowledgment appreciated (medicalsegmentation.com/covid19)",
            role: Role::Train,
            images: RemoteFile {
                name: "rp_im.zip",
                url: "https://ndownloader.figshare.com/files/25954007",
                checksum: Checksum::Record,
            },
            masks: RemoteFile {
                name: "rp_msk.zip",
                url: "https://ndownloader.figshare.com/files/25954013",
                checksum: Checksum::Record,
            },
        },
        Dataset {
            name: "covid20",
            title: "Ma et al. COVID-19-CT-Seg: 20 volumes (train)",
            licence: "CC BY-NC-SA 4.0 (Zenodo record 3757476): non-commercial",
            role: Role::Train,
            images: RemoteFile {
                name: "COVID-19-CT-Seg_20cases.zip",
                url: "https://zenodo.org/records/3757476/files/COVID-19-CT-Seg_20cases.zip",
                checksum: sha256(
                    "a5060480eff9315b069b086312dac4872777901fb80d268a5a83edd9f4e7b440",
                ),
            },
            masks: RemoteFile {
                name: "Infection_Mask.zip",
                url: "https://zenodo.org/records/3757476/files/Infection_Mask.zip",
                checksum: sha256(
                    "87901c73fdd2230260e61d2dbc57bf56026efc28264006b8ea2bf411453c1694",
                ),
            },
        },
    ]
}

/// `url` with its scheme and host replaced by `mirror` (`http://host:port`, a trailing `/` or
/// path prefix kept): `https://zenodo.org/records/1/files/a.zip` with mirror
/// `http://127.0.0.1:8000/cache` is `http://127.0.0.1:8000/cache/records/1/files/a.zip`.
pub fn mirrored(url: &str, mirror: &str) -> String {
    let path = url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("/");
    format!("{}{path}", mirror.trim_end_matches('/'))
}

/// The host of `url` (for error messages).
pub fn host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_replaces_scheme_and_host_only() {
        let url = "https://zenodo.org/records/3757476/files/Infection_Mask.zip";
        assert_eq!(
            mirrored(url, "http://127.0.0.1:9/"),
            "http://127.0.0.1:9/records/3757476/files/Infection_Mask.zip"
        );
        assert_eq!(
            mirrored(url, "http://proxy/cache"),
            "http://proxy/cache/records/3757476/files/Infection_Mask.zip"
        );
        assert_eq!(host(url), "zenodo.org");
        assert_eq!(host("http://127.0.0.1:9/x"), "127.0.0.1:9");
    }

    #[test]
    fn every_file_name_is_unique() {
        let mut names: Vec<&str> = all()
            .iter()
            .flat_map(|d| [d.images.name, d.masks.name])
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 6);
    }
}
