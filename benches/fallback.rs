//! What the fallback cache costs a request that succeeds: one whose response it stores (the
//! body copied aside as the caller reads it, then a store insert) and one whose response it may
//! not store (`Cache-Control: no-store`: passed on untouched), against the same pipeline without
//! the cache.
//!
//! Every variant sends a GET through `palisade::Client` (the standard pipeline: total and
//! attempt timeouts, retry, circuit breaker) over an in-memory transport, and reads the whole
//! body, as a caller that wants it does; the transport answers at once with a fresh response.
//! The bodies:
//!
//! - `1k`: 1 KiB in one chunk;
//! - `64k`: 64 KiB in four 16 KiB chunks (what a socket delivers), which the cache joins into
//!   one buffer to store.
//!
//! Before criterion runs, the bench counts heap allocations per request for each variant with
//! a counting global allocator, and prints them.
//!
//! Run with `cargo bench --bench fallback` (about 40 s).

use std::collections::VecDeque;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

mod common;

use bytes::Bytes;
use common::{current_thread, URL};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use palisade::fallback::FallbackCache;
use palisade::Client;
use reqwest::{Request, Response, ResponseBuilderExt};

#[global_allocator]
static ALLOC: common::alloc::Counting = common::alloc::Counting;

static KIB_1: [u8; 1024] = [b'a'; 1024];
static KIB_16: [u8; 16 * 1024] = [b'b'; 16 * 1024];

/// A body delivered in chunks, with no length given in advance.
struct Chunks(VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(self.0.pop_front().map(|c| Ok(http_body::Frame::data(c))))
    }
}

/// A client over a transport that answers with the given body shape and cache headers.
fn client(chunks: usize, chunk: &'static [u8], no_store: bool, cached: bool) -> Client {
    let transport = tower::service_fn(move |req: Request| async move {
        let mut b = http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .url(req.url().clone());
        if no_store {
            b = b.header("cache-control", "no-store");
        }
        let body = if chunks == 1 {
            reqwest::Body::from(Bytes::from_static(chunk))
        } else {
            let parts = (0..chunks).map(|_| Bytes::from_static(chunk)).collect();
            reqwest::Body::wrap(Chunks(parts))
        };
        Ok::<_, palisade::Error>(Response::from(b.body(body).expect("response")))
    });
    let mut b = Client::builder().transport(transport);
    if cached {
        b = b.fallback_cache(FallbackCache::default());
    }
    b.build().expect("client")
}

async fn send(c: &Client) -> Bytes {
    let resp = c.get(URL).send().await.expect("200");
    resp.bytes().await.expect("body")
}

type Variant = (&'static str, Client);

fn variants() -> Vec<Variant> {
    let mut v = Vec::new();
    for (body, chunks, chunk) in [("1k", 1, &KIB_1[..]), ("64k", 4, &KIB_16[..])] {
        for (kind, no_store) in [("storable", false), ("no_store", true)] {
            for (cache, cached) in [("no_cache", false), ("cache", true)] {
                let name: &'static str =
                    Box::leak(format!("{cache}/{kind}_{body}").into_boxed_str());
                v.push((name, client(chunks, chunk, no_store, cached)));
            }
        }
    }
    v
}

fn allocations(rt: &tokio::runtime::Runtime, variants: &[Variant]) {
    common::alloc::count_this_thread();
    const N: u64 = 2_000;
    println!("allocations per request (mean of {N}):");
    for (name, c) in variants {
        rt.block_on(async {
            for _ in 0..100 {
                black_box(send(c).await);
            }
            let before = common::alloc::allocs();
            for _ in 0..N {
                black_box(send(c).await);
            }
            let per = (common::alloc::allocs() - before) as f64 / N as f64;
            println!("  {name:<24} {per:>6.1}");
        });
    }
}

fn fallback_cache(c: &mut Criterion) {
    let rt = current_thread();
    let variants = variants();
    allocations(&rt, &variants);
    let mut group = c.benchmark_group("fallback_cache");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    for (name, client) in &variants {
        group.bench_function(*name, |b| b.to_async(&rt).iter(|| send(client)));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots().nresamples(20_000);
    targets = fallback_cache
}
criterion_main!(benches);
