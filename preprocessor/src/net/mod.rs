//! Fetching images by URL, safely: the address policy ([`address`]), the DNS resolver that
//! enforces it on every connection ([`resolver`]) and the bounded downloader ([`download`]).

pub mod address;
pub mod download;
pub mod resolver;

pub use download::{DownloadPolicy, Downloaded, Downloader};
