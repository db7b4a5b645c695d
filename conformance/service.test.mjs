// Conformance: Microsoft's JavaScript Speech SDK against the speech-pool service. The SDK
// is pointed at the service exactly as an app would point it at Azure:
// `SpeechConfig.fromHost(new URL("ws://service"), key)`, where the key is the service's
// SERVICE_API_KEY (the real Azure key, if any, stays in the service).
//
// Two variants, the same tests:
// - SERVICE_BACKEND=azure (default): the service's upstream is the speech-emulator over TLS
//   and the SDK's turns are relayed verbatim;
// - SERVICE_BACKEND=mock: the service runs its in-process mock, which cannot relay Azure's
//   protocol, so the service speaks it itself (translation). The mock's speech differs
//   (60 ms per character, no lead or tail, words split at spaces only), and the test that
//   needs the emulator's fault injection is skipped.
//
// Starts nothing itself; `bash conformance/run.sh` starts the processes and sets:
//   SERVICE_URL=ws://127.0.0.1:PORT     (required)
//   SERVICE_KEY=...                      (the service's SERVICE_API_KEY)
//   SERVICE_BACKEND=azure|mock
//   EMULATOR_HTTP=https://127.0.0.1:PORT (azure only: the emulator's control API; trusted
//                                         through NODE_EXTRA_CA_CERTS)
//   EMULATOR_TRANSCRIPT=...              (what is recognised: the emulator's --transcript,
//                                         or the mock's "hello world")

import { test } from "node:test";
import assert from "node:assert/strict";
import sdk from "microsoft-cognitiveservices-speech-sdk";

const url = process.env.SERVICE_URL;
const key = process.env.SERVICE_KEY ?? "service-key";
const emulator = process.env.EMULATOR_HTTP;
const transcript = process.env.EMULATOR_TRANSCRIPT ?? "hello world";
const mock = (process.env.SERVICE_BACKEND ?? "azure") === "mock";
if (!url || (!mock && !emulator)) {
  throw new Error("SERVICE_URL (and EMULATOR_HTTP unless SERVICE_BACKEND=mock) must be set; run conformance/run.sh");
}
const serviceHttp = url.replace(/^ws/, "http");

// The synthetic speech: the emulator's has a 50 ms lead, 60 ms per character and a 50 ms
// tail; the mock's is 60 ms per character of the text, spaces included.
const expectedMs = mock
  ? (text) => 60 * [...text].length
  : (text) => 50 + 60 * [...text.replace(/\s+/g, " ").trim()].length + 50;
// The word boundaries: the emulator splits punctuation off (a PunctuationBoundary), the
// mock reports the words as written between spaces.
const expectedWords = (text) =>
  mock
    ? { words: text.split(" "), punctuation: [] }
    : { words: text.replace(/[^\p{L}\p{N}\s']/gu, "").split(" "), punctuation: [...text.replace(/[\p{L}\p{N}\s']/gu, "")] };

const speechConfig = () => sdk.SpeechConfig.fromHost(new URL(url), key);

async function pools() {
  const res = await fetch(`${serviceHttp}/api/v1/pools`, { headers: { authorization: `Bearer ${key}` } });
  assert.equal(res.status, 200);
  return (await res.json()).pools;
}

const emulatorPost = (path, body) =>
  fetch(`${emulator}/_emulator/${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });

function speaker(config) {
  const synth = new sdk.SpeechSynthesizer(config, null);
  const speak = (text) =>
    new Promise((resolve) =>
      synth.speakTextAsync(text, resolve, (e) => resolve({ reason: sdk.ResultReason.Canceled, errorDetails: String(e) })),
    );
  return { synth, speak };
}

function pcm16k(seconds) {
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
  for (let off = 0; off < audio.byteLength; off += 3200) {
    stream.write(audio.slice(off, Math.min(off + 3200, audio.byteLength)));
  }
  stream.close();
  return stream;
}

test("TTS through the service: RIFF PCM of the right length, word boundaries, a warm connection", async () => {
  const before = (await pools())["speech-tts"];
  const config = speechConfig();
  config.speechSynthesisOutputFormat = sdk.SpeechSynthesisOutputFormat.Riff24Khz16BitMonoPcm;
  const { synth, speak } = speaker(config);
  const words = [];
  synth.wordBoundary = (_s, e) => words.push([e.text, e.boundaryType]);
  const text = "The quick brown fox jumps over the lazy dog.";
  try {
    const result = await speak(text);
    assert.equal(result.reason, sdk.ResultReason.SynthesizingAudioCompleted, result.errorDetails);
    const pcmBytes = result.audioData.byteLength - 44;
    assert.equal(new DataView(result.audioData).getUint32(40, true), pcmBytes);
    assert.equal((pcmBytes / 48000) * 1000, expectedMs(text));
    const spoken = words.filter(([, t]) => t === sdk.SpeechSynthesisBoundaryType.Word).map(([w]) => w);
    assert.deepEqual(spoken, expectedWords(text).words);
    assert.deepEqual(
      words.filter(([, t]) => t === sdk.SpeechSynthesisBoundaryType.Punctuation).map(([w]) => w),
      expectedWords(text).punctuation,
    );
    assert.ok(result.audioDuration > 0);
  } finally {
    synth.close();
  }
  const after = (await pools())["speech-tts"];
  assert.equal(after.allocations_warm - before.allocations_warm, 1, JSON.stringify(after));
  assert.equal(after.allocations_cold - before.allocations_cold, 0, JSON.stringify(after));
});

test("TTS through the service: two requests on one synthesizer, the second DEDICATED", async () => {
  const before = (await pools())["speech-tts"];
  const config = speechConfig();
  config.speechSynthesisOutputFormat = sdk.SpeechSynthesisOutputFormat.Audio24Khz48KBitRateMonoMp3;
  const { synth, speak } = speaker(config);
  try {
    for (const text of ["First request.", "Second request on the same socket."]) {
      const result = await speak(text);
      assert.equal(result.reason, sdk.ResultReason.SynthesizingAudioCompleted, result.errorDetails);
      const bytes = new Uint8Array(result.audioData);
      // The emulator sends MP3 frames; the mock an ID3 tag then filler bytes at the bit rate.
      assert.equal(bytes[0], mock ? 0x49 : 0xff, "MP3 frame sync or ID3 tag");
      const ms = (bytes.length / 6000) * 1000;
      assert.ok(ms >= expectedMs(text) && ms < expectedMs(text) + 100, `mp3 of ${ms} ms`);
    }
  } finally {
    synth.close();
  }
  const after = (await pools())["speech-tts"];
  assert.equal(after.allocations_warm - before.allocations_warm, 1, JSON.stringify(after));
  assert.equal(after.allocations_dedicated - before.allocations_dedicated, 1, JSON.stringify(after));
});

test("STT through the service: recognizeOnce (interactive path, its own pool)", async () => {
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
    assert.equal(result.offset, 0);
    assert.equal(result.duration, 15_000_000);
    assert.ok(hypotheses.length >= 4, `hypotheses: ${JSON.stringify(hypotheses)}`);
  } finally {
    reco.close();
  }
  const name = Object.keys(await pools()).find((n) => n.startsWith("speech-stt:interactive:en-us"));
  assert.ok(name, "an interactive en-US pool exists");
});

test("STT through the service: continuous recognition, detailed output, the service key as a bearer token", async () => {
  const config = sdk.SpeechConfig.fromHost(new URL(url));
  config.authorizationToken = key;
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

test("a wrong key is refused by the service (401), for TTS and STT", async () => {
  const wrong = sdk.SpeechConfig.fromHost(new URL(url), `${key}-wrong`);
  const { synth, speak } = speaker(wrong);
  try {
    const result = await speak("nope");
    assert.equal(result.reason, sdk.ResultReason.Canceled);
    assert.match(result.errorDetails, /401/);
  } finally {
    synth.close();
  }
  wrong.speechRecognitionLanguage = "en-US";
  const reco = new sdk.SpeechRecognizer(wrong, sdk.AudioConfig.fromStreamInput(pushStream(0.3)));
  try {
    const result = await new Promise((resolve) =>
      reco.recognizeOnceAsync(resolve, (e) => resolve({ reason: sdk.ResultReason.Canceled, errorDetails: String(e) })),
    );
    assert.equal(result.reason, sdk.ResultReason.Canceled);
  } finally {
    reco.close();
  }
});

test("the token endpoint: an SDK using an authorization token the service issued", async () => {
  const res = await fetch(`${serviceHttp}/sts/v1.0/issueToken`, {
    method: "POST",
    headers: { "Ocp-Apim-Subscription-Key": key },
  });
  assert.equal(res.status, 200);
  const token = await res.text();
  assert.equal(token.split(".").length, 3, "a JWT");
  const config = sdk.SpeechConfig.fromHost(new URL(url));
  config.authorizationToken = token;
  const { synth, speak } = speaker(config);
  try {
    const result = await speak("Served with a token.");
    assert.equal(result.reason, sdk.ResultReason.SynthesizingAudioCompleted, result.errorDetails);
  } finally {
    synth.close();
  }
  const wrong = await fetch(`${serviceHttp}/sts/v1.0/issueToken`, {
    method: "POST",
    headers: { "Ocp-Apim-Subscription-Key": `${key}-wrong` },
  });
  assert.equal(wrong.status, 401);
});

test("the voices list through the SDK (getVoicesAsync)", async () => {
  const synth = new sdk.SpeechSynthesizer(sdk.SpeechConfig.fromHost(new URL(serviceHttp), key), null);
  try {
    const result = await synth.getVoicesAsync("en-US");
    assert.equal(result.reason, sdk.ResultReason.VoicesListRetrieved, result.errorDetails);
    assert.ok(result.voices.length > 0);
    assert.ok(result.voices.every((v) => v.locale === "en-US" && v.shortName.startsWith("en-US-")));
  } finally {
    synth.close();
  }
});

test("TTS REST, as a plain HTTP client (LiveKit's Azure plugin) calls it", async () => {
  const text = "Hello over REST.";
  const res = await fetch(`${serviceHttp}/cognitiveservices/v1`, {
    method: "POST",
    headers: {
      "Ocp-Apim-Subscription-Key": key,
      "Content-Type": "application/ssml+xml",
      "X-Microsoft-OutputFormat": "riff-24khz-16bit-mono-pcm",
      "X-Session-Id": "conformance-rest",
    },
    body: `<speak version='1.0' xml:lang='en-US'><voice name='en-US-AvaMultilingualNeural'>${text}</voice></speak>`,
  });
  assert.equal(res.status, 200, await res.clone().text());
  assert.equal(res.headers.get("content-type"), "audio/wav");
  const audio = new Uint8Array(await res.arrayBuffer());
  assert.equal(String.fromCharCode(...audio.slice(0, 4)), "RIFF");
  assert.equal(((audio.length - 44) / 48000) * 1000, expectedMs(text));
  const bad = await fetch(`${serviceHttp}/cognitiveservices/v1`, {
    method: "POST",
    headers: { "Ocp-Apim-Subscription-Key": key, "Content-Type": "application/ssml+xml" },
    body: "<speak>no format</speak>",
  });
  assert.equal(bad.status, 400);
});

test("upstream closes: between turns invisible, mid-turn a failure the SDK recovers from via the pool", { skip: mock && "needs the emulator's fault injection" }, async () => {
  const config = speechConfig();
  config.speechSynthesisOutputFormat = sdk.SpeechSynthesisOutputFormat.Raw16Khz16BitMonoPcm;
  const { synth, speak } = speaker(config);
  const ok = sdk.ResultReason.SynthesizingAudioCompleted;
  try {
    assert.equal((await speak("warm up")).reason, ok);
    // The emulator closes every TTS socket (idle / age limit): the service's upstream
    // connections, including this synthesizer's. The next request is served anyway.
    const closed = await (await emulatorPost("close", { target: "tts_ws", code: 1000, reason: "Idle timeout" })).json();
    assert.ok(closed.affected >= 1);
    const again = await speak("after the close");
    assert.equal(again.reason, ok, again.errorDetails);
    assert.equal(again.audioData.byteLength, 32 * expectedMs("after the close"));

    // Throttled mid-turn: the SDK sees Azure's 4429 and the request is canceled; its next
    // request reconnects and is served from the pool.
    await emulatorPost("faults", { kind: "close", code: 4429, target: "tts_ws", times: 1 });
    const throttled = await speak("throttled");
    assert.equal(throttled.reason, sdk.ResultReason.Canceled);
    assert.match(throttled.errorDetails, /4429/);
    const before = (await pools())["speech-tts"];
    const recovered = await speak("recovered");
    assert.equal(recovered.reason, ok, recovered.errorDetails);
    const after = (await pools())["speech-tts"];
    assert.equal(
      after.allocations_warm + after.allocations_cold - before.allocations_warm - before.allocations_cold,
      1,
      "the reconnected socket took a pooled connection",
    );

    // The upstream dies mid-turn without a close frame: a retryable failure (1011).
    await emulatorPost("faults", { kind: "disconnect", target: "tts_ws", times: 1 });
    const dropped = await speak("dropped");
    assert.equal(dropped.reason, sdk.ResultReason.Canceled);
    assert.match(dropped.errorDetails, /1011/);
    assert.equal((await speak("recovered again")).reason, ok);
  } finally {
    synth.close();
  }
});
