"""Microsoft's native Speech SDK (the Python package azure-cognitiveservices-speech) through
the speech-pool service: the README's Python example, and what an app built on it relies on.

Run by run.sh against the service twice (relaying to the emulator, and on the mock
backend), with SERVICE_URL (ws://host:port), SERVICE_KEY and EMULATOR_TRANSCRIPT set.
Exits non-zero, naming the check, when any check fails.
"""

import os
import sys

import azure.cognitiveservices.speech as speechsdk

URL = os.environ["SERVICE_URL"]
KEY = os.environ["SERVICE_KEY"]
TRANSCRIPT = os.environ.get("EMULATOR_TRANSCRIPT", "hello world")
VOICE = "en-US-AvaMultilingualNeural"

failures = []
passed = 0


def check(name, ok, detail=""):
    global passed
    if ok:
        passed += 1
        print(f"ok: {name}")
    else:
        failures.append(name)
        print(f"FAILED: {name}: {detail}", file=sys.stderr)


def config(key=KEY):
    c = speechsdk.SpeechConfig(host=URL, subscription=key)
    c.set_speech_synthesis_output_format(
        speechsdk.SpeechSynthesisOutputFormat.Riff24Khz16BitMonoPcm
    )
    c.speech_synthesis_voice_name = VOICE
    return c


def error_details(result):
    if result.reason == speechsdk.ResultReason.Canceled:
        return result.cancellation_details.error_details
    return ""


synthesizer = speechsdk.SpeechSynthesizer(speech_config=config(), audio_config=None)
for turn in range(2):
    r = synthesizer.speak_text_async(f"Hello from a warm connection, turn {turn}").get()
    check(
        f"synthesis turn {turn} completes with audio",
        r.reason == speechsdk.ResultReason.SynthesizingAudioCompleted
        and len(r.audio_data) > 44
        and r.audio_data[:4] == b"RIFF",
        f"{r.reason} {len(r.audio_data)} bytes {error_details(r)}",
    )

# SSML Azure cannot parse is refused as Azure refuses it (close 1007), and the synthesizer
# keeps working: its next request is served on a fresh connection.
r = synthesizer.speak_ssml_async(
    f"<speak version='1.0' xml:lang='en-US'><voice name='{VOICE}'>unclosed</speak>"
).get()
check(
    "malformed SSML is cancelled with close 1007",
    r.reason == speechsdk.ResultReason.Canceled and "1007" in error_details(r),
    f"{r.reason} {error_details(r)}",
)
r = synthesizer.speak_text_async("After the refused one").get()
check(
    "the next synthesis after a refusal completes",
    r.reason == speechsdk.ResultReason.SynthesizingAudioCompleted and len(r.audio_data) > 44,
    f"{r.reason} {error_details(r)}",
)

# One second of 16 kHz mono PCM, pushed: the transcript comes back.
fmt = speechsdk.audio.AudioStreamFormat(samples_per_second=16000, bits_per_sample=16, channels=1)
stream = speechsdk.audio.PushAudioInputStream(stream_format=fmt)
stream.write(bytes([1, 0]) * 16000)
stream.close()
recognizer = speechsdk.SpeechRecognizer(
    speech_config=config(), audio_config=speechsdk.audio.AudioConfig(stream=stream)
)
r = recognizer.recognize_once_async().get()
check(
    "recognize_once returns the transcript",
    r.reason == speechsdk.ResultReason.RecognizedSpeech
    and r.text.lower().strip(" .?!") == TRANSCRIPT,
    f"{r.reason} {r.text!r} {error_details(r)}",
)

# A key that is not the service's is refused on the upgrade.
wrong = speechsdk.SpeechSynthesizer(speech_config=config("not-the-service-key"), audio_config=None)
r = wrong.speak_text_async("Refused").get()
check(
    "a wrong key is refused with 401",
    r.reason == speechsdk.ResultReason.Canceled and "401" in error_details(r),
    f"{r.reason} {error_details(r)}",
)

print(f"python sdk {speechsdk.__version__}: {passed} checks passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
