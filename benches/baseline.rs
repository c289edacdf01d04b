//! A bare hyper 1 server answering a fixed ~200-byte JSON body: the yardstick
//! the load benchmark compares the gateway's cache hits with.
//!
//! Usage: cargo run --release --example baseline -- 127.0.0.1:18081

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

const BODY: &[u8] = br#"{"url":"https://tcsas-pkg-1250000000.cos.ap-singapore.myqcloud.com/T04257DS9431720WTAG/mnp/mpjl3td541qppx9k/v1.zip?q-sign-time=1796320922;1796321522&q-signature=dbb8fae31122456749d3"}"#;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 18081)));
    let listener = TcpListener::bind(addr).await?;
    eprintln!("baseline listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_: Request<Incoming>| async {
                let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
                response.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/json"),
                );
                Ok::<_, Infallible>(response)
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
