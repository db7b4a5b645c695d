// Records what Microsoft's JavaScript Speech SDK sends for one synthesis and two
// recognitions, through an emulator started with `--capture`, and writes one JSON-lines file
// per scenario. speech-azure's wire test (speech-azure/tests/wire.rs) does the same work and
// compares its own capture with these files, so the committed files in `captures/` are the
// reference for what Azure receives from the SDK.
//
//   EMULATOR_URL=ws://127.0.0.1:PORT EMULATOR_KEY=... node capture.mjs OUT_DIR
//
// `bash conformance/run.sh` runs this after the conformance tests and fails if the result
// differs from `captures/`; `bash conformance/run.sh --update-captures` rewrites `captures/`.
// The scenarios here and in wire.rs must stay the same work: change both together.

import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import sdk from "microsoft-cognitiveservices-speech-sdk";

const url = process.env.EMULATOR_URL;
const key = process.env.EMULATOR_KEY ?? "conformance-key";
const outDir = process.argv[2];
if (!url || !outDir) {
  throw new Error("usage: EMULATOR_URL=ws://127.0.0.1:PORT node capture.mjs OUT_DIR");
}
const httpBase = url.replace(/^ws/, "http");

// The work both clients do (wire.rs uses the same values).
const VOICE = "en-US-AvaMultilingualNeural";
const TEXT = "Hello world";
const LANGUAGE = "en-US";
const AUDIO_SECONDS = 1.0;

async function control(method, path) {
  const res = await fetch(`${httpBase}/_emulator/${path}`, { method });
  if (!res.ok) throw new Error(`${method} /_emulator/${path}: HTTP ${res.status} ${await res.text()}`);
  return res;
}

// Waits until the SDK has closed every socket, so its close frames are in the capture.
async function allClosed() {
  for (let i = 0; i < 100; i++) {
    const c = await (await control("GET", "counters")).json();
    if (c.connections_open === 0) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("the SDK left a websocket open");
}

async function record(name, work) {
  await control("DELETE", "capture");
  await work();
  await allClosed();
  const lines = await (await control("GET", "capture")).text();
  writeFileSync(join(outDir, `js-sdk-${name}.jsonl`), lines);
  console.log(`captured ${name}: ${lines.split("\n").filter(Boolean).length} records`);
}

function config() {
  return sdk.SpeechConfig.fromHost(new URL(url), key);
}

function pushStream(seconds) {
  const format = sdk.AudioStreamFormat.getWaveFormatPCM(16000, 16, 1);
  const stream = sdk.AudioInputStream.createPushStream(format);
  const samples = Math.round(16000 * seconds);
  const buf = new ArrayBuffer(samples * 2);
  const v = new DataView(buf);
  for (let i = 0; i < samples; i++) {
    v.setInt16(i * 2, Math.round(Math.sin((2 * Math.PI * 440 * i) / 16000) * 8000), true);
  }
  for (let off = 0; off < buf.byteLength; off += 3200) {
    stream.write(buf.slice(off, Math.min(off + 3200, buf.byteLength)));
  }
  stream.close();
  return stream;
}

mkdirSync(outDir, { recursive: true });

// One synthesis: RIFF 24 kHz PCM, no event handlers.
await record("tts", async () => {
  const c = config();
  c.speechSynthesisVoiceName = VOICE;
  c.speechSynthesisOutputFormat = sdk.SpeechSynthesisOutputFormat.Riff24Khz16BitMonoPcm;
  const synth = new sdk.SpeechSynthesizer(c, null);
  try {
    const result = await new Promise((resolve, reject) =>
      synth.speakTextAsync(TEXT, resolve, (e) => reject(new Error(String(e)))),
    );
    if (result.reason !== sdk.ResultReason.SynthesizingAudioCompleted) {
      throw new Error(`synthesis failed: ${result.errorDetails}`);
    }
  } finally {
    synth.close();
  }
});

// One single-utterance recognition, simple output.
await record("stt-simple", async () => {
  const c = config();
  c.speechRecognitionLanguage = LANGUAGE;
  const reco = new sdk.SpeechRecognizer(c, sdk.AudioConfig.fromStreamInput(pushStream(AUDIO_SECONDS)));
  try {
    const result = await new Promise((resolve, reject) =>
      reco.recognizeOnceAsync(resolve, (e) => reject(new Error(String(e)))),
    );
    if (result.reason !== sdk.ResultReason.RecognizedSpeech) {
      throw new Error(`recognition failed: ${result.errorDetails}`);
    }
  } finally {
    reco.close();
  }
});

// One continuous recognition to the end of the audio, detailed output.
await record("stt-detailed", async () => {
  const c = config();
  c.speechRecognitionLanguage = LANGUAGE;
  c.outputFormat = sdk.OutputFormat.Detailed;
  const reco = new sdk.SpeechRecognizer(c, sdk.AudioConfig.fromStreamInput(pushStream(AUDIO_SECONDS)));
  try {
    await new Promise((resolve, reject) => {
      reco.canceled = (_s, e) => {
        if (e.reason === sdk.CancellationReason.Error) reject(new Error(e.errorDetails));
      };
      reco.sessionStopped = () => resolve();
      reco.startContinuousRecognitionAsync(() => {}, (e) => reject(new Error(String(e))));
    });
    await new Promise((resolve) => reco.stopContinuousRecognitionAsync(resolve, resolve));
  } finally {
    reco.close();
  }
});
