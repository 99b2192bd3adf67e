//! Blocking chunk-store calls from async code, on tokio's blocking pool or inline.

/// A blocking chunk-store call (disk I/O, fsync), started at once. Under a multi-threaded
/// runtime (production) it runs on tokio's blocking pool; under a current-thread runtime it runs
/// inline. The simulator needs the latter: its stores are in memory, and a pool thread finishing
/// in wall-clock order would wake tasks in an order the seed does not decide.
pub(crate) enum StoreCall<T> {
    Done(T),
    Pool(tokio::task::JoinHandle<T>),
}

impl<T: Send + 'static> StoreCall<T> {
    pub(crate) fn start(call: impl FnOnce() -> T + Send + 'static) -> Self {
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                StoreCall::Pool(tokio::task::spawn_blocking(call))
            }
            _ => StoreCall::Done(call()),
        }
    }

    pub(crate) async fn join(self) -> Result<T, tokio::task::JoinError> {
        match self {
            StoreCall::Done(value) => Ok(value),
            StoreCall::Pool(handle) => handle.await,
        }
    }
}
