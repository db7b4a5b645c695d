"""Records what Microsoft's native Speech SDK (the Python package, azure-cognitiveservices-speech)
sends for the same work as capture.mjs, through an emulator started with `--capture`, and
writes one JSON-lines file per scenario (native-sdk-*.jsonl).

    EMULATOR_URL=ws://127.0.0.1:PORT EMULATOR_KEY=... python3 capture_native.py OUT_DIR

Not part of CI (the SDK is a 40 MB native wheel): `bash conformance/capture-native.sh`
installs it in a virtual environment, runs this and rewrites captures/native-sdk-*.jsonl.
The scenarios here, in capture.mjs and in speech-azure/tests/wire.rs must stay the same work.
"""

import json
import math
import os
import struct
import sys
import time
import urllib.request

import azure.cognitiveservices.speech as speechsdk

URL = os.environ["EMULATOR_URL"]
KEY = os.environ.get("EMULATOR_KEY", "conformance-key")
OUT = sys.argv[1]
HTTP = URL.replace("ws", "http", 1)

VOICE = "en-US-AvaMultilingualNeural"
TEXT = "Hello world"
LANGUAGE = "en-US"
AUDIO_SECONDS = 1.0


def control(method, path):
    req = urllib.request.Request(f"{HTTP}/_emulator/{path}", method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


def all_closed():
    for _ in range(100):
        if json.loads(control("GET", "counters"))["connections_open"] == 0:
            return
        time.sleep(0.05)
    raise RuntimeError("the SDK left a websocket open")


def without_host_details(record):
    """The SDK reports the build machine's kernel and libc in its User-Agent and OS fields;
    they say nothing about the protocol and would make every regeneration differ."""
    headers = record.get("headers", {})
    if "user-agent" in headers:
        headers["user-agent"] = "<SpeechSDK user agent with host details>"
    os_info = record.get("body", {}).get("json", {}).get("context", {}).get("os")
    if os_info:
        for k in ("name", "version"):
            if k in os_info:
                os_info[k] = "<host details>"
    return record


def record(name, work):
    control("DELETE", "capture")
    work()
    all_closed()
    records = [json.loads(l) for l in control("GET", "capture").decode().splitlines() if l]
    with open(os.path.join(OUT, f"native-sdk-{name}.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(without_host_details(r), separators=(",", ":"), sort_keys=True) + "\n")
    print(f"captured {name}: {len(records)} records")


def config():
    return speechsdk.SpeechConfig(host=URL, subscription=KEY)


def push_stream(seconds):
    fmt = speechsdk.audio.AudioStreamFormat(samples_per_second=16000, bits_per_sample=16, channels=1)
    stream = speechsdk.audio.PushAudioInputStream(stream_format=fmt)
    samples = round(16000 * seconds)
    pcm = b"".join(
        struct.pack("<h", round(math.sin(2 * math.pi * 440 * i / 16000) * 8000)) for i in range(samples)
    )
    for off in range(0, len(pcm), 3200):
        stream.write(pcm[off : off + 3200])
    stream.close()
    return stream


def tts():
    c = config()
    c.speech_synthesis_voice_name = VOICE
    c.set_speech_synthesis_output_format(speechsdk.SpeechSynthesisOutputFormat.Riff24Khz16BitMonoPcm)
    synth = speechsdk.SpeechSynthesizer(speech_config=c, audio_config=None)
    result = synth.speak_text_async(TEXT).get()
    if result.reason != speechsdk.ResultReason.SynthesizingAudioCompleted:
        raise RuntimeError(f"synthesis failed: {result.cancellation_details.error_details}")
    del synth


def stt_simple():
    c = config()
    c.speech_recognition_language = LANGUAGE
    audio = speechsdk.audio.AudioConfig(stream=push_stream(AUDIO_SECONDS))
    reco = speechsdk.SpeechRecognizer(speech_config=c, audio_config=audio)
    result = reco.recognize_once_async().get()
    if result.reason != speechsdk.ResultReason.RecognizedSpeech:
        raise RuntimeError(f"recognition failed: {result.reason}")
    del reco


def stt_detailed():
    c = config()
    c.speech_recognition_language = LANGUAGE
    c.output_format = speechsdk.OutputFormat.Detailed
    audio = speechsdk.audio.AudioConfig(stream=push_stream(AUDIO_SECONDS))
    reco = speechsdk.SpeechRecognizer(speech_config=c, audio_config=audio)
    done = []
    reco.session_stopped.connect(lambda _e: done.append(True))
    reco.canceled.connect(lambda _e: done.append(True))
    reco.start_continuous_recognition_async().get()
    for _ in range(200):
        if done:
            break
        time.sleep(0.05)
    reco.stop_continuous_recognition_async().get()
    del reco


os.makedirs(OUT, exist_ok=True)
record("tts", tts)
record("stt-simple", stt_simple)
record("stt-detailed", stt_detailed)
