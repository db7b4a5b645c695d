use pool_core::{Manager, Pool, Tier};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default)]
struct Fake {
    created: AtomicU64,
    closed: AtomicU64,
}
#[derive(Clone)]
struct M(Arc<Fake>);
impl Manager for M {
    type Resource = u64;
    type Error = std::io::Error;
    async fn create(&self) -> Result<u64, std::io::Error> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(self.0.created.fetch_add(1, Ordering::SeqCst))
    }
    async fn close(&self, _r: u64) {
        self.0.closed.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() {
    let fake = Arc::new(Fake::default());
    let pool = Pool::builder(M(fake.clone()))
        .warm_target(5)
        .max_size(10)
        .session_awareness(true)
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    println!("after prepare {:?}", pool.snapshot().warm_pool_size);
    let mut held = vec![];
    let mut handles = vec![];
    for _ in 0..10 {
        let p = pool.clone();
        handles.push(tokio::spawn(async move { p.acquire().await.unwrap() }));
    }
    for h in handles {
        held.push(h.await.unwrap());
    }
    let tiers: Vec<Tier> = held.iter().map(|g| g.tier()).collect();
    println!("tiers {:?}", tiers);
    // 11th waits, times out
    let p = pool.clone();
    let t = tokio::spawn(async move { p.acquire().await.map(|g| g.tier()) });
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(held.pop());
    println!("waiter got {:?}", t.await.unwrap());
    drop(held);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let s = pool.snapshot();
    println!(
        "snap idle={} size={} created={} closed={} {:?}",
        s.warm_pool_size,
        s.size,
        s.created_total,
        s.closed_total,
        (s.allocations_warm, s.allocations_cold)
    );
    // sessions
    let a = pool.acquire_for_session("s1").await.unwrap();
    println!("s1 first {:?}", a.tier());
    drop(a);
    let a = pool.acquire_for_session("s1").await.unwrap();
    println!("s1 second {:?}", a.tier());
    drop(a);
    let (p1, p2) = (pool.clone(), pool.clone());
    let (x, y) = tokio::join!(
        async move { p1.acquire_for_session("s2").await.map(|g| g.tier()) },
        async move { p2.acquire_for_session("s2").await.map(|g| g.tier()) }
    );
    println!("s2 concurrent {:?} {:?}", x, y);
    println!(
        "release {} {}",
        pool.release_for_session("s1").await,
        pool.release_for_session("s1").await
    );
    let pool2 = Pool::builder(M(fake.clone()))
        .max_size(1)
        .acquire_timeout(Some(Duration::from_secs(1)))
        .build()
        .unwrap();
    let g = pool2.acquire().await.unwrap();
    let e = pool2.acquire().await.unwrap_err();
    println!("timeout: {e}");
    drop(g);
    pool.shutdown().await;
    pool2.shutdown().await;
    let s = pool.snapshot();
    println!(
        "after shutdown size={} created={} closed={} bg={}",
        s.size,
        fake.created.load(Ordering::SeqCst),
        fake.closed.load(Ordering::SeqCst),
        pool.background_tasks()
    );
}
