//! The fallback cache's memory bound, measured by the allocator: 100,000 distinct URLs with
//! 10 KiB bodies through a client whose store may hold 16 MiB. Its own test binary, with one
//! test, so that nothing else allocates while the heap is counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use palisade::fallback::FallbackCache;
use palisade::{Client, Error};
use reqwest::{Request, Response, ResponseBuilderExt};

/// The system allocator, counting the bytes live and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is to the system allocator.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is to the system allocator.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let grow = new_size - layout.size();
                let now = LIVE.fetch_add(grow, Ordering::Relaxed) + grow;
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const URLS: usize = 100_000;
const BODY: usize = 10 * 1024;
const MAX_BYTES: u64 = 16 << 20;
const MIB: f64 = (1 << 20) as f64;

/// A transport that answers every request with a fresh 10 KiB body.
async fn answer(req: Request) -> Result<Response, Error> {
    let resp = http::Response::builder()
        .status(200)
        .header("content-type", "application/octet-stream")
        .url(req.url().clone())
        .body(reqwest::Body::from(vec![b'x'; BODY]))
        .expect("a response");
    Ok(Response::from(resp))
}

#[test]
fn a_hundred_thousand_urls_stay_within_max_bytes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = Client::builder()
            .transport(tower::service_fn(answer))
            .fallback_cache(FallbackCache::default().max_bytes(MAX_BYTES))
            .build()
            .expect("client");
        let store = client.fallback_cache().expect("a store").clone();
        // Warm up: the client's own allocations, tracing, the runtime.
        client.get("http://warm.test/").send().await.expect("ok");
        store.clear();
        store.sync();
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);

        let mut held_max = 0u64;
        for i in 0..URLS {
            let resp = client
                .get(format!("http://api.test/items/{i}"))
                .send()
                .await
                .expect("ok");
            assert_eq!(resp.bytes().await.expect("body").len(), BODY);
            held_max = held_max.max(store.stored_bytes());
        }
        store.sync();
        let held = store.stored_bytes();
        let peak = PEAK.load(Ordering::Relaxed) - base;
        let live = LIVE.load(Ordering::Relaxed).saturating_sub(base);
        println!(
            "store: {:.2} MiB held at the end ({} slots), {:.2} MiB at most after any request; \
             heap: {:.2} MiB live, {:.2} MiB at peak; bound {:.0} MiB",
            held as f64 / MIB,
            store.entry_count(),
            held_max as f64 / MIB,
            live as f64 / MIB,
            peak as f64 / MIB,
            MAX_BYTES as f64 / MIB,
        );
        assert!(held <= MAX_BYTES, "weighed size {held} over the bound");
        // The store keeps as much as it may: not a cache that holds nothing.
        assert!(held > MAX_BYTES * 9 / 10, "held only {held}");
        // The weigher counts each slot's overhead (moka's node, the maps, the `Arc`) as a
        // fixed 1 KiB, measured here, so once evictions are applied the heap the store takes
        // is within the bound, but for what no slot owns (moka's tables and frequency sketch):
        // half a MiB at most.
        assert!(
            live as u64 <= MAX_BYTES + (1 << 19),
            "heap holds {live} bytes over the baseline"
        );
        // moka applies evictions in batches, once 64 writes are pending (64 × 11 KiB here),
        // and grows its tables by doubling: the peak may pass the bound by that much.
        assert!(
            peak as u64 <= MAX_BYTES + (2 << 20),
            "heap peaked {peak} bytes over the baseline"
        );
    });
}
