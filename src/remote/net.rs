//! Detecting this machine's public address, for the security group when `ssh.source_cidrs` is not set.
//! A plain HTTP GET whose body is the address (checkip.amazonaws.com by default).

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DETECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("cannot detect this machine's public address from `{url}`: {reason}; set `ssh.source_cidrs` in the fleet file")]
pub struct DetectError {
    pub url: String,
    pub reason: String,
}

/// This machine's public address as a single-address CIDR (`/32` or `/128`).
pub async fn detect_public_cidr(url: &str) -> Result<IpNet, DetectError> {
    let error = |reason: String| DetectError { url: url.to_string(), reason };
    let rest = url.strip_prefix("http://").ok_or_else(|| error("only http:// URLs are supported".into()))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    let host = authority.rsplit_once(':').map_or(authority, |(host, _)| host);
    let address = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
    let response = tokio::time::timeout(DETECT_TIMEOUT, async {
        let mut stream = TcpStream::connect(&address).await?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: fleetbake\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.take(64 * 1024).read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    })
    .await
    .map_err(|_| error(format!("no answer within {}s", DETECT_TIMEOUT.as_secs())))?
    .map_err(|io| error(io.to_string()))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| error("not an HTTP response".into()))?;
    let status_ok = head.lines().next().is_some_and(|status| status.split_whitespace().nth(1) == Some("200"));
    if !status_ok {
        return Err(error(format!("answered `{}`", head.lines().next().unwrap_or_default())));
    }
    let ip: IpAddr =
        body.trim().parse().map_err(|_| error(format!("answered `{}`, not an IP address", body.trim())))?;
    Ok(IpNet::from(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn serve_once(answer: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buffer = [0u8; 1024];
            let _ = socket.read(&mut buffer).await;
            socket.write_all(answer.as_bytes()).await.unwrap();
        });
        format!("http://{address}/")
    }

    #[tokio::test]
    async fn reads_the_address_from_the_body() {
        let url = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n203.0.113.9\n").await;
        assert_eq!(detect_public_cidr(&url).await.unwrap().to_string(), "203.0.113.9/32");
    }

    #[tokio::test]
    async fn a_non_address_answer_is_a_clear_error() {
        let url = serve_once("HTTP/1.1 200 OK\r\n\r\n<html>captive portal</html>").await;
        let error = detect_public_cidr(&url).await.unwrap_err().to_string();
        assert!(error.contains("not an IP address") && error.contains("ssh.source_cidrs"), "{error}");
    }

    #[tokio::test]
    async fn nothing_listening_is_a_clear_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        let error = detect_public_cidr(&url).await.unwrap_err().to_string();
        assert!(error.starts_with("cannot detect this machine's public address"), "{error}");
    }
}
