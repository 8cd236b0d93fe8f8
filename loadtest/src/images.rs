//! The images sent: read once from a folder (`<class>/<file>`, the class known, or files at its
//! top), in a fixed shuffled order so classes mix; and a tiny HTTP server on 127.0.0.1 that
//! serves them from memory, so URL targets need no internet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

#[derive(Debug, Clone)]
pub struct Image {
    /// Path below the folder, `/`-separated (`pants/1234.jpg`).
    pub path: String,
    /// Index in [`ImageSet::classes`] when the file sits in a class folder.
    pub class: Option<usize>,
    pub bytes: Bytes,
    pub content_type: &'static str,
}

#[derive(Debug, Default)]
pub struct ImageSet {
    pub images: Vec<Image>,
    /// Class folder names, sorted.
    pub classes: Vec<String>,
}

/// The content type of an image file by extension; `None` for other files.
pub fn content_type(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        _ => return None,
    })
}

impl ImageSet {
    /// Reads the image files at the top of `dir` and one level down (the folder names are the
    /// classes), in a fixed shuffled order.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let mut set = Self::default();
        let mut files = vec![];
        for entry in sorted_entries(dir)? {
            if entry.is_dir() {
                let class = entry
                    .file_name()
                    .and_then(|n| n.to_str())
                    .context("class folder name is not UTF-8")?
                    .to_string();
                let before = files.len();
                for file in sorted_entries(&entry)? {
                    if file.is_file() && content_type(&file).is_some() {
                        files.push((file, Some(set.classes.len())));
                    }
                }
                if files.len() > before {
                    set.classes.push(class);
                }
            } else if content_type(&entry).is_some() {
                files.push((entry, None));
            }
        }
        for (file, class) in files {
            let rel = file.strip_prefix(dir).unwrap_or(&file);
            let path = rel
                .iter()
                .map(|c| c.to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let bytes = std::fs::read(&file).with_context(|| format!("read {}", file.display()))?;
            set.images.push(Image {
                path,
                class,
                bytes: bytes.into(),
                content_type: content_type(&file).unwrap_or("application/octet-stream"),
            });
        }
        shuffle(&mut set.images, 0x5eed);
        Ok(set)
    }
}

fn sorted_entries(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("read folder {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort();
    Ok(entries)
}

/// Fisher-Yates with splitmix64: the same order on every run, classes mixed.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// Percent-encodes a path for a URL, keeping `/` and the unreserved characters.
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

type Files = Arc<HashMap<String, (Bytes, &'static str)>>;

/// Serves an [`ImageSet`] from memory over HTTP until dropped.
pub struct ImageServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ImageServer {
    pub async fn start(set: &ImageSet, addr: SocketAddr) -> anyhow::Result<Self> {
        let files: Files = Arc::new(
            set.images
                .iter()
                .map(|i| {
                    (
                        format!("/{}", encode_path(&i.path)),
                        (i.bytes.clone(), i.content_type),
                    )
                })
                .collect(),
        );
        let app = axum::Router::new().fallback(serve_file).with_state(files);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("image server: bind {addr}"))?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("image server stopped: {e}");
            }
        });
        Ok(Self { addr, task })
    }

    /// The URL of an image of the set.
    pub fn url(&self, image: &Image) -> String {
        format!("http://{}/{}", self.addr, encode_path(&image.path))
    }
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_file(State(files): State<Files>, uri: Uri) -> Response {
    match files.get(uri.path()) {
        Some((bytes, content_type)) => {
            ([(header::CONTENT_TYPE, *content_type)], bytes.clone()).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_classes_from_folders_and_ignores_other_files() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let write = |p: &str| {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap_or(dir.path()))
                .unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(path, p).unwrap_or_else(|e| panic!("{e}"));
        };
        for p in [
            "hat/a.jpg",
            "hat/b.PNG",
            "pants/c.jpeg",
            "empty/notes.txt",
            "top.webp",
        ] {
            write(p);
        }
        let set = ImageSet::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(set.classes, ["hat", "pants"]);
        let mut found: Vec<_> = set
            .images
            .iter()
            .map(|i| (i.path.as_str(), i.class.map(|c| set.classes[c].as_str())))
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                ("hat/a.jpg", Some("hat")),
                ("hat/b.PNG", Some("hat")),
                ("pants/c.jpeg", Some("pants")),
                ("top.webp", None)
            ]
        );
        let png = set.images.iter().find(|i| i.path == "hat/b.PNG");
        assert_eq!(png.map(|i| i.content_type), Some("image/png"));
    }

    #[test]
    fn shuffle_is_a_fixed_permutation() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        shuffle(&mut a, 7);
        shuffle(&mut b, 7);
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        a.sort();
        assert_eq!(a, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn encodes_paths() {
        assert_eq!(encode_path("t-shirt/a b.jpg"), "t-shirt/a%20b.jpg");
        assert_eq!(encode_path("x/é.png"), "x/%C3%A9.png");
    }
}
