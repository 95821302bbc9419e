//! HTTP/1.1 spoken by hand over TCP, for what a well-behaved client
//! library will not do: no `Host`, a body that stalls, a body still being
//! sent when the answer comes, a client that resets its connection.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer read off the wire.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawAnswer {
    /// The value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }
}

/// Reads one answer (head, then a `content-length` body) from `stream`,
/// failing after `limit`.
pub async fn read_answer(stream: &mut TcpStream, limit: Duration) -> std::io::Result<RawAnswer> {
    let read = async {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = find(&bytes, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|line| {
                        let (key, value) = line.split_once(':')?;
                        key.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if bytes.len() >= end + 4 + length {
                    let status = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let body =
                        String::from_utf8_lossy(&bytes[end + 4..end + 4 + length]).into_owned();
                    return Ok(RawAnswer { status, head, body });
                }
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("closed after {} bytes", bytes.len()),
                ));
            }
            bytes.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))?
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sends `request` as it is and reads the answer.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<RawAnswer> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    read_answer(&mut stream, Duration::from_secs(10)).await
}

/// The head of a POST to the endpoint with `token` and a declared body
/// length, plus `extra` header lines.
pub fn post_head(addr: SocketAddr, token: &str, length: usize, extra: &str) -> String {
    format!(
        "POST {} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n",
        super::ENDPOINT
    )
}
