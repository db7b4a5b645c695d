// Driven by `cargo xtask bench sdk`: time to first audio of a brand-new JS SDK synthesizer,
// and to the first recognition result of a brand-new recognizer, straight to the emulator
// (DIRECT_URL, wss, trusted through NODE_EXTRA_CA_CERTS) and through the service
// (SERVICE_URL), alternating sample by sample so both see the same machine load.
// Prints one JSON line per sample: {"case":"tts"|"stt","target":"direct"|"service","ms":N}.

import sdk from "microsoft-cognitiveservices-speech-sdk";

const direct = process.env.DIRECT_URL;
const service = process.env.SERVICE_URL;
const key = process.env.KEY;
const samples = Number(process.env.SAMPLES ?? "8");

function ttsFirstAudio(url) {
  const config = sdk.SpeechConfig.fromHost(new URL(url), key);
  config.speechSynthesisOutputFormat = sdk.SpeechSynthesisOutputFormat.Raw16Khz16BitMonoPcm;
  const synth = new sdk.SpeechSynthesizer(config, null);
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    let first;
    synth.synthesizing = () => {
      first ??= performance.now() - t0;
    };
    synth.speakTextAsync(
      "Hello, how can I help you today?",
      (r) => {
        synth.close();
        if (r.reason !== sdk.ResultReason.SynthesizingAudioCompleted || first === undefined) {
          reject(new Error(`synthesis failed: ${r.errorDetails}`));
        } else resolve(first);
      },
      (e) => {
        synth.close();
        reject(new Error(String(e)));
      },
    );
  });
}

function sttFirstResult(url) {
  const config = sdk.SpeechConfig.fromHost(new URL(url), key);
  config.speechRecognitionLanguage = "en-US";
  const format = sdk.AudioStreamFormat.getWaveFormatPCM(16000, 16, 1);
  const stream = sdk.AudioInputStream.createPushStream(format);
  const pcm = new ArrayBuffer(16000 * 2); // 1 s of silence-free tone is not needed: any audio
  const v = new DataView(pcm);
  for (let i = 0; i < 16000; i++) v.setInt16(i * 2, Math.round(Math.sin(i / 5) * 8000), true);
  for (let off = 0; off < pcm.byteLength; off += 3200) stream.write(pcm.slice(off, off + 3200));
  stream.close();
  const reco = new sdk.SpeechRecognizer(config, sdk.AudioConfig.fromStreamInput(stream));
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    let first;
    reco.recognizing = () => {
      first ??= performance.now() - t0;
    };
    reco.recognizeOnceAsync(
      (r) => {
        reco.close();
        if (r.reason !== sdk.ResultReason.RecognizedSpeech || first === undefined) {
          reject(new Error(`recognition failed: ${r.errorDetails}`));
        } else resolve(first);
      },
      (e) => {
        reco.close();
        reject(new Error(String(e)));
      },
    );
  });
}

const settle = () => new Promise((r) => setTimeout(r, 100));
for (const [name, run] of [["tts", ttsFirstAudio], ["stt", sttFirstResult]]) {
  // One unrecorded round each, so module loading and JIT do not land on either target.
  await run(direct);
  await run(service);
  for (let i = 0; i < samples; i++) {
    for (const [target, url] of [["direct", direct], ["service", service]]) {
      const ms = await run(url);
      console.log(JSON.stringify({ case: name, target, ms }));
      // Lets the service's session release return its connection to the warm set.
      await settle();
    }
  }
}
