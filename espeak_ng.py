"""eSpeak NG, the speech synthesizer that voices the toy corpus, called through ctypes: voices,
pitch, intonation and rate, and seeded synthesis into memory (no subprocess, no audio device).
It follows eSpeak NG's C API (speak_lib.h); the library and its voice data come from the
espeakng-loader package. data.py resamples its output to 16 kHz and writes the toy corpus.

    python -c "from espeak_ng import Espeak; e = Espeak.get(); print(e.version(), e.sample_rate)"
"""
import ctypes
import os

import numpy as np


class Espeak:
    """The process's eSpeak NG (Espeak.get()): pick a voice with set_voice, then synth text."""
    AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: return only when synthesis is done
    RATE, PITCH, RANGE = 1, 3, 4  # espeak_PARAMETER
    POS_CHARACTER, CHARS_AUTO = 1, 0  # espeak_POSITION_TYPE, text encoding flags
    _instance = None  # eSpeak holds global state: initialise once per process (Espeak.get())

    @classmethod
    def get(cls):
        cls._instance = cls._instance or cls()
        return cls._instance

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError:
            raise ImportError("the toy corpus needs: pip install espeakng-loader") from None
        c = ctypes
        lib = c.CDLL(espeakng_loader.get_library_path())
        self.data_path = espeakng_loader.get_data_path()
        callback_type = c.CFUNCTYPE(c.c_int, c.POINTER(c.c_short), c.c_int, c.c_void_p)
        lib.espeak_Initialize.argtypes = [c.c_int, c.c_int, c.c_char_p, c.c_int]
        lib.espeak_SetSynthCallback.argtypes = [callback_type]
        lib.espeak_SetVoiceByName.argtypes = [c.c_char_p]
        lib.espeak_SetParameter.argtypes = [c.c_int, c.c_int, c.c_int]
        lib.espeak_Synth.argtypes = [c.c_void_p, c.c_size_t, c.c_uint, c.c_int, c.c_uint,
                                     c.c_uint, c.c_void_p, c.c_void_p]
        lib.espeak_ng_SetRandSeed.argtypes = [c.c_long]
        lib.espeak_Info.argtypes, lib.espeak_Info.restype = [c.c_void_p], c.c_char_p
        self.sample_rate = lib.espeak_Initialize(
            self.AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(), 0)  # Hz, 22050
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with data at {self.data_path}")
        self.chunks = []
        self.callback = callback_type(self._collect)  # keep a reference: C holds the pointer
        lib.espeak_SetSynthCallback(self.callback)
        self.lib = lib

    def version(self):
        """eSpeak NG's version string, e.g. "1.52.0" (the corpus depends on it)."""
        return self.lib.espeak_Info(None).decode()

    def _collect(self, wav, num_samples, events):
        if num_samples > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = continue synthesis

    def set_voice(self, voice, pitch, intonation, rate):
        variant = voice.partition("+")[2]
        # eSpeak ignores unknown variants silently, so check the file exists.
        if variant and not os.path.exists(os.path.join(self.data_path, "voices", "!v", variant)):
            raise ValueError(f"eSpeak NG has no voice variant {variant!r}")
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r}")
        for parameter, value in [(self.PITCH, pitch), (self.RANGE, intonation), (self.RATE, rate)]:
            self.lib.espeak_SetParameter(parameter, value, 0)

    def synth(self, text, noise_seed):
        """Text -> float32 [S] in [-1, 1) at self.sample_rate; noise_seed fixes breathy voices' noise."""
        self.chunks = []
        # Breathy voices (f2, f3, f5) add noise, seeded from the clock unless we seed it.
        self.lib.espeak_ng_SetRandSeed(noise_seed)
        utf8 = text.lower().encode()  # lower case: eSpeak spells some all-caps words ("US")
        if self.lib.espeak_Synth(utf8, len(utf8) + 1, 0, self.POS_CHARACTER, 0, self.CHARS_AUTO,
                                 None, None) != 0:
            raise RuntimeError(f"espeak_Synth failed on {text!r}")
        self.lib.espeak_Synchronize()
        return np.concatenate(self.chunks).astype(np.float32) / 32768
