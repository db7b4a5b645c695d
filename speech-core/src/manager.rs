//! Type-erased pool managers, so the service can hold speech pools without being generic
//! over the backend.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;

use crate::connection::{Recognizer, Synthesizer};
use crate::error::SpeechError;
use crate::request::{RecognitionFormat, RecognitionMode};

/// Opens new text-to-speech connections: the cold path (DNS, TCP, TLS, websocket upgrade,
/// auth). A backend implements this once; [`SynthesizerManager`] turns it into a
/// `pool_core::Manager`.
///
/// `Debug` is required so that pools and managers can be printed in diagnostics; an
/// implementation must keep credentials out of its `Debug` output.
#[async_trait]
pub trait SynthesizerFactory: fmt::Debug + Send + Sync + 'static {
    /// Opens one connection. It is warmed separately ([`Connection::warm`](crate::Connection::warm)).
    async fn create(&self) -> Result<Box<dyn Synthesizer>, SpeechError>;

    /// Fired when one of this factory's idle connections stops being ready on its own (a
    /// liveness probe found its peer dead); see `pool_core::Manager::readiness_signal`.
    fn readiness_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }

    /// The voices this backend speaks, as the JSON body of Azure's
    /// `GET /cognitiveservices/voices/list`: an array of objects with at least `Name`,
    /// `DisplayName`, `LocalName`, `ShortName`, `Gender`, `Locale`, `LocaleName`,
    /// `SampleRateHertz`, `VoiceType`, `Status` and `WordsPerMinute`
    /// (docs/protocol.md#voices-list). A backend that fetches it from a server passes the
    /// server's body through unchanged, so fields Azure adds later reach the caller.
    ///
    /// Costs a request to the speech service where there is one; callers cache it. The
    /// default says the backend has no list.
    async fn voices(&self) -> Result<bytes::Bytes, SpeechError> {
        Err(SpeechError::bad_request("this backend has no voices list"))
    }
}

/// Opens new speech-to-text connections. See [`SynthesizerFactory`].
#[async_trait]
pub trait RecognizerFactory: fmt::Debug + Send + Sync + 'static {
    /// Opens one connection. It is warmed separately ([`Connection::warm`](crate::Connection::warm)).
    async fn create(&self) -> Result<Box<dyn Recognizer>, SpeechError>;

    /// See [`SynthesizerFactory::readiness_signal`].
    fn readiness_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }

    /// A factory of the same backend for another (mode, language, format): Azure fixes
    /// them when a connection opens, so a client asking for another combination needs
    /// connections of their own (and the service a pool of their own). The default says
    /// the backend serves one combination only.
    fn for_combination(
        &self,
        mode: RecognitionMode,
        language: &str,
        format: RecognitionFormat,
    ) -> Result<Arc<dyn RecognizerFactory>, SpeechError> {
        let _ = (mode, language, format);
        Err(SpeechError::bad_request(
            "this backend serves one recognition combination only",
        ))
    }
}

/// Defines a type-erased `pool_core::Manager` over boxed connections of one kind. The two
/// kinds (synthesizers and recognizers) differ only in their trait names, so one definition
/// serves both and they cannot drift apart.
macro_rules! erased_manager {
    ($(#[$doc:meta])* $manager:ident, $factory:ident, $connection:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $manager {
            factory: Arc<dyn $factory>,
        }

        impl $manager {
            /// Wraps a factory.
            pub fn new(factory: impl $factory) -> Self {
                Self {
                    factory: Arc::new(factory),
                }
            }

            /// Wraps an already shared factory (e.g. one whose counters a test also holds).
            pub fn from_arc(factory: Arc<dyn $factory>) -> Self {
                Self { factory }
            }

            /// The factory behind this manager.
            pub fn factory(&self) -> &Arc<dyn $factory> {
                &self.factory
            }
        }

        impl pool_core::Manager for $manager {
            type Resource = Box<dyn $connection>;
            type Error = SpeechError;

            fn create(&self) -> impl Future<Output = Result<Self::Resource, Self::Error>> + Send {
                self.factory.create()
            }

            fn warm(
                &self,
                resource: &mut Self::Resource,
            ) -> impl Future<Output = Result<(), Self::Error>> + Send {
                resource.warm()
            }

            fn warm_for_caller(
                &self,
                resource: &mut Self::Resource,
            ) -> impl Future<Output = Result<(), Self::Error>> + Send {
                resource.warm_for_caller()
            }

            fn is_ready(&self, resource: &Self::Resource) -> bool {
                resource.is_ready()
            }

            fn reset(
                &self,
                resource: &mut Self::Resource,
            ) -> impl Future<Output = Result<(), Self::Error>> + Send {
                resource.reset()
            }

            fn close(&self, resource: Self::Resource) -> impl Future<Output = ()> + Send {
                resource.close()
            }

            fn readiness_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
                self.factory.readiness_signal()
            }
        }
    };
}

erased_manager!(
    /// A `pool_core::Manager` of boxed [`Synthesizer`]s from any backend.
    ///
    /// `create` goes to the factory; `warm`, `warm_for_caller`, `is_ready`, `reset` and `close` go to the
    /// connection itself. The cost of erasure is one boxed future per call and one virtual
    /// call for `is_ready`, negligible next to a network round trip, and it keeps
    /// `Pool<SynthesizerManager>` a single concrete type whatever the backend.
    SynthesizerManager,
    SynthesizerFactory,
    Synthesizer
);

erased_manager!(
    /// A `pool_core::Manager` of boxed [`Recognizer`]s from any backend. See
    /// [`SynthesizerManager`].
    RecognizerManager,
    RecognizerFactory,
    Recognizer
);

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use bytes::Bytes;
    use pool_core::Manager;
    use tokio::sync::mpsc;

    use super::*;
    use crate::{
        Connection, RecognitionEvent, RecognitionRequest, SynthesisEvent, SynthesisRequest,
        SynthesisSummary,
    };

    #[derive(Debug, Default)]
    struct Calls {
        warm: AtomicU32,
        reset: AtomicU32,
        close: AtomicU32,
    }

    struct Fake {
        calls: Arc<Calls>,
        ready: bool,
    }

    #[async_trait]
    impl Connection for Fake {
        fn is_ready(&self) -> bool {
            self.ready
        }
        async fn warm(&mut self) -> Result<(), SpeechError> {
            self.calls.warm.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn reset(&mut self) -> Result<(), SpeechError> {
            self.calls.reset.fetch_add(1, Ordering::SeqCst);
            Err(SpeechError::transient("reset failed"))
        }
        async fn close(self: Box<Self>) {
            self.calls.close.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl Synthesizer for Fake {
        async fn synthesize(
            &mut self,
            request: SynthesisRequest,
            events: mpsc::Sender<SynthesisEvent>,
        ) -> Result<SynthesisSummary, SpeechError> {
            request.validate()?;
            events
                .send(SynthesisEvent::Audio(Bytes::from_static(b"ab")))
                .await?;
            Ok(SynthesisSummary {
                audio_bytes: 2,
                chunks: 1,
                request_id: request.request_id,
            })
        }
    }

    #[async_trait]
    impl Recognizer for Fake {
        async fn recognize(
            &mut self,
            _request: RecognitionRequest,
            mut audio: mpsc::Receiver<Bytes>,
            events: mpsc::Sender<RecognitionEvent>,
        ) -> Result<(), SpeechError> {
            while audio.recv().await.is_some() {}
            events.send(RecognitionEvent::TurnEnd).await?;
            Ok(())
        }
    }

    #[derive(Debug, Default)]
    struct FakeFactory {
        calls: Arc<Calls>,
    }

    #[async_trait]
    impl SynthesizerFactory for FakeFactory {
        async fn create(&self) -> Result<Box<dyn Synthesizer>, SpeechError> {
            Ok(Box::new(Fake {
                calls: self.calls.clone(),
                ready: true,
            }))
        }
    }

    #[async_trait]
    impl RecognizerFactory for FakeFactory {
        async fn create(&self) -> Result<Box<dyn Recognizer>, SpeechError> {
            Ok(Box::new(Fake {
                calls: self.calls.clone(),
                ready: false,
            }))
        }
    }

    /// A minimal stateless backend compiles with only the turn method.
    struct Minimal;
    impl Connection for Minimal {}

    fn assert_manager<M: Manager>(_: &M) {}

    #[tokio::test]
    async fn synthesizer_manager_forwards_lifecycle() {
        let calls = Arc::new(Calls::default());
        let manager = SynthesizerManager::new(FakeFactory {
            calls: calls.clone(),
        });
        assert_manager(&manager);
        let mut conn = manager.create().await.expect("create");
        manager.warm(&mut conn).await.expect("warm");
        assert!(manager.is_ready(&conn));
        assert!(manager.reset(&mut conn).await.is_err());
        let (tx, mut rx) = mpsc::channel(4);
        let req = SynthesisRequest::text(
            "hi",
            "en-US-AvaNeural",
            crate::AudioFormat::Raw16Khz16BitMonoPcm,
        );
        let id = req.request_id.clone();
        let summary = conn.synthesize(req, tx).await.expect("synthesize");
        assert_eq!(summary.request_id, id);
        assert_eq!(
            rx.recv().await,
            Some(SynthesisEvent::Audio(Bytes::from_static(b"ab")))
        );
        manager.close(conn).await;
        assert_eq!(calls.warm.load(Ordering::SeqCst), 1);
        assert_eq!(calls.reset.load(Ordering::SeqCst), 1);
        assert_eq!(calls.close.load(Ordering::SeqCst), 1);
        assert!(format!("{manager:?}").contains("FakeFactory"));
    }

    #[tokio::test]
    async fn recognizer_manager_forwards_lifecycle() {
        let calls = Arc::new(Calls::default());
        let manager = RecognizerManager::new(FakeFactory {
            calls: calls.clone(),
        });
        assert_manager(&manager);
        let mut conn = manager.create().await.expect("create");
        assert!(!manager.is_ready(&conn));
        let (audio_tx, audio_rx) = mpsc::channel(1);
        drop(audio_tx);
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let res = conn
            .recognize(RecognitionRequest::new("en-US"), audio_rx, tx)
            .await;
        assert_eq!(res, Err(SpeechError::Cancelled));
        manager.close(conn).await;
        assert_eq!(calls.close.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn defaults_are_stateless() {
        let mut m: Box<dyn Connection> = Box::new(Minimal);
        assert!(m.is_ready());
        assert_eq!(m.warm().await, Ok(()));
        assert_eq!(m.reset().await, Ok(()));
        m.close().await;
    }

    #[test]
    fn erased_types_are_send_and_managers_sync() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<Box<dyn Synthesizer>>();
        send::<Box<dyn Recognizer>>();
        send_sync::<SynthesizerManager>();
        send_sync::<RecognizerManager>();
    }
}
