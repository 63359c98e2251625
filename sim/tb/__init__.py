"""Reusable cocotb testbench parts: stream driver/sink with random backpressure, scoreboard.

Every piece is generic over the payload: give it an Amaranth `lib.data`
layout (or shape) and it packs Python values (ints, lists, dicts) into the
flat `<port>__payload` vector Amaranth emits, and unpacks them back.
"""

from .payload import pack, unpack
from .scoreboard import Scoreboard
from .stream import StreamDriver, StreamSink, reset_dut, start_clock

__all__ = [
    "Scoreboard",
    "StreamDriver",
    "StreamSink",
    "pack",
    "reset_dut",
    "start_clock",
    "unpack",
]
