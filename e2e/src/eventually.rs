use std::fmt::Debug;
use std::time::Duration;

/// Polls `check` until it returns `Ok`, for `timeout` at most; then returns
/// the last error. Waiting on a condition, never on a fixed sleep, keeps tests
/// both fast and patient on a loaded machine.
pub async fn eventually<T, E, F, Fut>(timeout: Duration, mut check: F) -> Result<T, E>
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(50);
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}
