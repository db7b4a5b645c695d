//! Text that arrives while it is being written (an LLM's tokens): the shared rules of the
//! text-streaming synthesis turn ([`Synthesizer::synthesize_text_stream`](crate::Synthesizer::synthesize_text_stream)).

use tokio::sync::mpsc;

use crate::error::SpeechError;
use crate::event::SynthesisEvent;
use crate::request::{SynthesisInput, SynthesisRequest, validate_voice_name};

/// Most text one streamed turn may carry, in bytes. Azure's v2 endpoint takes no SSML
/// document, so the 64 KiB SSML limit does not apply; this bound only keeps one turn from
/// holding unbounded memory (about an hour of speech).
pub const MAX_STREAMED_TEXT_BYTES: usize = 256 * 1024;

/// Checks the parts of a text-streaming request known before any text: the voice (text
/// needs one) and an empty input (the pieces are the input).
pub fn validate_text_stream_request(request: &SynthesisRequest) -> Result<(), SpeechError> {
    match &request.input {
        SynthesisInput::Text(t) if t.is_empty() => {}
        _ => {
            return Err(SpeechError::bad_request(
                "a text-streaming request takes its text from the pieces; its input must be empty text",
            ));
        }
    }
    validate_voice_name(&request.voice)
}

/// The default text-streaming turn's first half: gathers every piece until the channel
/// closes, then returns `request` with the whole text as its input. Returns
/// `Err(Cancelled)` as soon as the events receiver is dropped, so a cancelled turn does not
/// wait for text that will never come.
pub(crate) async fn gather(
    mut request: SynthesisRequest,
    mut text: mpsc::Receiver<String>,
    events: &mpsc::Sender<SynthesisEvent>,
) -> Result<SynthesisRequest, SpeechError> {
    validate_text_stream_request(&request)?;
    let mut all = String::new();
    loop {
        tokio::select! {
            piece = text.recv() => match piece {
                Some(p) => {
                    if all.len() + p.len() > MAX_STREAMED_TEXT_BYTES {
                        return Err(SpeechError::bad_request(format!(
                            "the streamed text exceeds {MAX_STREAMED_TEXT_BYTES} bytes"
                        )));
                    }
                    all.push_str(&p);
                }
                None => break,
            },
            () = events.closed() => return Err(SpeechError::Cancelled),
        }
    }
    request.input = SynthesisInput::Text(all);
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AudioFormat;

    fn empty() -> SynthesisRequest {
        SynthesisRequest::text("", "en-US-AvaNeural", AudioFormat::Raw16Khz16BitMonoPcm)
    }

    #[tokio::test]
    async fn gathers_pieces_in_order() {
        let (tx, rx) = mpsc::channel(4);
        let (etx, _erx) = mpsc::channel(1);
        tx.send("Hello, ".to_owned()).await.unwrap();
        tx.send("world.".to_owned()).await.unwrap();
        drop(tx);
        let r = gather(empty(), rx, &etx).await.expect("gathered");
        assert_eq!(r.input, SynthesisInput::Text("Hello, world.".into()));
    }

    #[tokio::test]
    async fn a_dropped_receiver_cancels_while_waiting_for_text() {
        let (_tx, rx) = mpsc::channel::<String>(4);
        let (etx, erx) = mpsc::channel(1);
        drop(erx);
        assert_eq!(
            gather(empty(), rx, &etx).await.err(),
            Some(SpeechError::Cancelled)
        );
    }

    #[test]
    fn requests_must_be_empty_text_with_a_voice() {
        assert!(validate_text_stream_request(&empty()).is_ok());
        let mut r = empty();
        r.input = SynthesisInput::Text("x".into());
        assert!(validate_text_stream_request(&r).is_err());
        let mut r = empty();
        r.voice = "bad voice<".into();
        assert!(validate_text_stream_request(&r).is_err());
    }
}
