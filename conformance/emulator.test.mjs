// Conformance: Microsoft's JavaScript Speech SDK against the speech-emulator crate.
//
// Starts nothing itself. Needs a running emulator in plain mode:
//   EMULATOR_URL=ws://127.0.0.1:PORT   (required)
//   EMULATOR_KEY=...                   (the emulator's --key; default "conformance-key")
//   EMULATOR_TRANSCRIPT=...            (the emulator's --transcript; default "hello world")
// `bash conformance/run.sh` builds and starts the emulator, then runs `node --test` here.

import { test } from "node:test";
import assert from "node:assert/strict";
import sdk from "microsoft-cognitiveservices-speech-sdk";

const url = process.env.EMULATOR_URL;
const key = process.env.EMULATOR_KEY ?? "conformance-key";
const transcript = process.env.EMULATOR_TRANSCRIPT ?? "hello world";
if (!url) {
  throw new Error("EMULATOR_URL is not set (e.g. ws://127.0.0.1:PORT); run conformance/run.sh");
}
const httpBase = url.replace(/^ws/, "http");

// The emulator's synthetic speech: 50 ms lead, 60 ms per character, 50 ms tail.
const expectedMs = (text) => 50 + 60 * [...text.replace(/\s+/g, " ").trim()].length + 50;

function speechConfig() {
  return sdk.SpeechConfig.fromHost(new URL(url), key);
}

function synthesize(config, text, onWord) {
  // A null audio config: keep the audio in the result instead of playing it.
  const synth = new sdk.SpeechSynthesizer(config, null);
  if (onWord) synth.wordBoundary = (_s, e) => onWord(e);
  return new Promise((resolve, reject) => {
    synth.speakTextAsync(
      text,
      (result) => {
        synth.close();
        resolve(result);
      },
      (err) => {
        synth.close();
        reject(new Error(String(err)));
      },
    );
  });
}

function riffInfo(buf) {
  const v = new DataView(buf);
  const tag = (o) => String.fromCharCode(...new Uint8Array(buf, o, 4));
  return {
    riff: tag(0),
    wave: tag(8),
    format: v.getUint16(20, true),
    channels: v.getUint16(22, true),
    sampleRate: v.getUint32(24, true),
    bits: v.getUint16(34, true),
    dataTag: tag(36),
    dataLen: v.getUint32(40, true),
  };
}

test("TTS: RIFF 24 kHz PCM of the right format and length, with word boundaries", async () => {
  const config = speechConfig();
  config.speechSynthesisOutputFormat = sdk.SpeechSynthesisOutputFormat.Riff24Khz16BitMonoPcm;
  const text = "The quick brown fox jumps over the lazy dog.";
  const words = [];
  const result = await synthesize(config, text, (e) => words.push([e.text, e.boundaryType]));
  assert.equal(result.reason, sdk.ResultReason.SynthesizingAudioCompleted, result.errorDetails);
  const audio = result.audioData;
  const info = riffInfo(audio);
  assert.equal(info.riff, "RIFF");
  assert.equal(info.wave, "WAVE");
  assert.equal(info.format, 1, "PCM");
  assert.equal(info.channels, 1);
  assert.equal(info.sampleRate, 24000);
  assert.equal(info.bits, 16);
  assert.equal(info.dataTag, "data");
  const pcmBytes = audio.byteLength - 44;
  assert.equal(info.dataLen, pcmBytes, "the SDK's RIFF header describes the PCM it received");
  const ms = (pcmBytes / 48000) * 1000;
  assert.ok(Math.abs(ms - expectedMs(text)) <= 1, `audio is ${ms} ms, expected ${expectedMs(text)} ms`);
  // Plausible speech: between 50 and 200 ms per character.
  assert.ok(ms > text.length * 50 && ms < text.length * 200);
  // Attaching a word-boundary handler makes the SDK ask for punctuation boundaries too; the
  // service reports both as WordBoundary metadata, told apart by BoundaryType.
  const spoken = words.filter(([, t]) => t === sdk.SpeechSynthesisBoundaryType.Word).map(([w]) => w);
  assert.deepEqual(spoken, ["The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]);
  assert.deepEqual(
    words.filter(([, t]) => t === sdk.SpeechSynthesisBoundaryType.Punctuation).map(([w]) => w),
    ["."],
  );
  // SessionEnd metadata gives the SDK the audio duration (in ticks).
  assert.ok(result.audioDuration > 0);
});

test("TTS: MP3 output, two requests on one synthesizer (one warm connection)", async () => {
  const config = speechConfig();
  config.speechSynthesisOutputFormat =
    sdk.SpeechSynthesisOutputFormat.Audio24Khz48KBitRateMonoMp3;
  const synth = new sdk.SpeechSynthesizer(config, null);
  const speak = (text) =>
    new Promise((resolve, reject) => synth.speakTextAsync(text, resolve, (e) => reject(new Error(String(e)))));
  try {
    for (const text of ["First request.", "Second request on the same socket."]) {
      const result = await speak(text);
      assert.equal(result.reason, sdk.ResultReason.SynthesizingAudioCompleted, result.errorDetails);
      const bytes = new Uint8Array(result.audioData);
      assert.equal(bytes[0], 0xff, "MP3 frame sync");
      assert.equal(bytes[1] & 0xe0, 0xe0, "MP3 frame sync");
      // 48 kbit/s = 6000 bytes per second of audio.
      const ms = (bytes.length / 6000) * 1000;
      assert.ok(ms >= expectedMs(text) && ms < expectedMs(text) + 100, `mp3 of ${ms} ms`);
    }
  } finally {
    synth.close();
  }
});

function pcm16k(seconds) {
  // A 440 Hz tone: the emulator hears the configured transcript in any audio.
  const samples = Math.round(16000 * seconds);
  const buf = new ArrayBuffer(samples * 2);
  const v = new DataView(buf);
  for (let i = 0; i < samples; i++) {
    v.setInt16(i * 2, Math.round(Math.sin((2 * Math.PI * 440 * i) / 16000) * 8000), true);
  }
  return buf;
}

function pushStream(seconds) {
  const format = sdk.AudioStreamFormat.getWaveFormatPCM(16000, 16, 1);
  const stream = sdk.AudioInputStream.createPushStream(format);
  const audio = pcm16k(seconds);
  // 100 ms chunks, as a live source would deliver them.
  for (let off = 0; off < audio.byteLength; off += 3200) {
    stream.write(audio.slice(off, Math.min(off + 3200, audio.byteLength)));
  }
  stream.close();
  return stream;
}

test("STT: recognizeOnce over a pushed 16 kHz PCM stream returns the transcript", async () => {
  const config = speechConfig();
  config.speechRecognitionLanguage = "en-US";
  const reco = new sdk.SpeechRecognizer(config, sdk.AudioConfig.fromStreamInput(pushStream(1.5)));
  const hypotheses = [];
  reco.recognizing = (_s, e) => hypotheses.push(e.result.text);
  try {
    const result = await new Promise((resolve, reject) =>
      reco.recognizeOnceAsync(resolve, (e) => reject(new Error(String(e)))),
    );
    assert.equal(result.reason, sdk.ResultReason.RecognizedSpeech, result.errorDetails);
    assert.equal(result.text, transcript);
    // Offsets in 100-ns ticks, computed from the audio sent: 1.5 s of speech.
    assert.equal(result.offset, 0);
    assert.equal(result.duration, 15_000_000);
    assert.ok(hypotheses.length >= 4, `hypotheses: ${JSON.stringify(hypotheses)}`);
  } finally {
    reco.close();
  }
});

test("STT: continuous recognition, detailed output, token auth", async () => {
  // Fetch a token from the emulator's STS endpoint, then authenticate with it alone.
  const res = await fetch(`${httpBase}/sts/v1.0/issueToken`, {
    method: "POST",
    headers: { "Ocp-Apim-Subscription-Key": key },
  });
  assert.equal(res.status, 200);
  const token = await res.text();
  assert.equal(token.split(".").length, 3, "JWT-shaped");
  const config = sdk.SpeechConfig.fromHost(new URL(url));
  config.authorizationToken = token;
  config.speechRecognitionLanguage = "en-US";
  config.outputFormat = sdk.OutputFormat.Detailed;
  const reco = new sdk.SpeechRecognizer(config, sdk.AudioConfig.fromStreamInput(pushStream(1.0)));
  const recognized = [];
  let canceled;
  try {
    await new Promise((resolve, reject) => {
      reco.recognized = (_s, e) => {
        if (e.result.reason === sdk.ResultReason.RecognizedSpeech) recognized.push(e.result);
      };
      reco.canceled = (_s, e) => {
        canceled = e;
      };
      reco.sessionStopped = () => resolve();
      reco.startContinuousRecognitionAsync(() => {}, (e) => reject(new Error(String(e))));
    });
    await new Promise((resolve) => reco.stopContinuousRecognitionAsync(resolve, resolve));
  } finally {
    reco.close();
  }
  if (canceled && canceled.reason === sdk.CancellationReason.Error) {
    assert.fail(`canceled: ${canceled.errorDetails}`);
  }
  assert.equal(recognized.length, 1);
  assert.equal(recognized[0].text, transcript);
  const json = JSON.parse(recognized[0].properties.getProperty(sdk.PropertyId.SpeechServiceResponse_JsonResult));
  assert.equal(json.NBest[0].Display, transcript);
  assert.equal(recognized[0].duration, 10_000_000);
});

async function counters() {
  const res = await fetch(`${httpBase}/_emulator/counters`);
  return res.json();
}

test("a wrong key is refused: TTS gives up at once, STT retries the handshake", async () => {
  const wrong = sdk.SpeechConfig.fromHost(new URL(url), `${key}-wrong`);
  const before = (await counters()).handshakes_rejected;
  const synth = new sdk.SpeechSynthesizer(wrong, null);
  try {
    const result = await new Promise((resolve) =>
      synth.speakTextAsync("nope", resolve, (e) => resolve({ reason: sdk.ResultReason.Canceled, errorDetails: String(e) })),
    );
    assert.equal(result.reason, sdk.ResultReason.Canceled);
    assert.match(result.errorDetails, /401/);
  } finally {
    synth.close();
  }
  // The synthesizer retries only on a 403 status, which Node's ws never reports (it reports
  // 1006), so a refused TTS handshake is tried once.
  const afterTts = (await counters()).handshakes_rejected;
  assert.equal(afterTts - before, 1);

  wrong.speechRecognitionLanguage = "en-US";
  const reco = new sdk.SpeechRecognizer(wrong, sdk.AudioConfig.fromStreamInput(pushStream(0.3)));
  try {
    const result = await new Promise((resolve) => reco.recognizeOnceAsync(resolve, (e) => resolve({ reason: sdk.ResultReason.Canceled, errorDetails: String(e) })));
    assert.equal(result.reason, sdk.ResultReason.Canceled);
  } finally {
    reco.close();
  }
  // The recognizer treats the 1006 as an expired token and retries (maxRetryCount = 4).
  const afterStt = (await counters()).handshakes_rejected;
  assert.equal(afterStt - afterTts, 5);
});

test("TTS: the SDK reconnects after a server close, and recovers from an injected 4429", async () => {
  const config = speechConfig();
  config.speechSynthesisOutputFormat = sdk.SpeechSynthesisOutputFormat.Raw16Khz16BitMonoPcm;
  const synth = new sdk.SpeechSynthesizer(config, null);
  const speak = (text) =>
    new Promise((resolve) =>
      synth.speakTextAsync(text, resolve, (e) => resolve({ reason: sdk.ResultReason.Canceled, errorDetails: String(e) })),
    );
  const post = (path, body) =>
    fetch(`${httpBase}/_emulator/${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  try {
    const ok = sdk.ResultReason.SynthesizingAudioCompleted;
    assert.equal((await speak("warm up")).reason, ok);
    const opened = (await counters()).connections_opened;
    // Wait for the SDK itself to see the close, not only the server: the server counts the
    // socket closed before the SDK has processed the close frame, and a request sent in
    // between fails with "Websocket not ready" (seen once in CI).
    const connection = sdk.Connection.fromSynthesizer(synth);
    const sawClose = new Promise((resolve) => {
      connection.disconnected = () => resolve(true);
      setTimeout(() => resolve(false), 5000);
    });
    // The service closes the warm socket (idle / max age): the next request reconnects.
    assert.equal((await (await post("close", { target: "tts_ws", code: 1000, reason: "Idle timeout" })).json()).affected, 1);
    assert.equal(await sawClose, true, "the SDK reported the server's close");
    const again = await speak("after the close");
    assert.equal(again.reason, ok, again.errorDetails);
    assert.equal(again.audioData.byteLength, 32 * expectedMs("after the close"));
    assert.equal((await counters()).connections_opened, opened + 1);
    // Throttled mid-turn: the request is canceled with the close code, the next one works.
    await post("faults", { kind: "close", code: 4429, target: "tts_ws", times: 1 });
    const throttled = await speak("throttled");
    assert.equal(throttled.reason, sdk.ResultReason.Canceled);
    assert.match(throttled.errorDetails, /4429/);
    assert.equal((await speak("recovered")).reason, ok);
  } finally {
    synth.close();
  }
});
