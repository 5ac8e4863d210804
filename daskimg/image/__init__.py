"""Bytes to pixels, pure functions with no I/O: decode (:mod:`._decode`), resize and layout
(:mod:`._transform`), colour management (:mod:`._colour`)."""

from ._colour import srgb_converter
from ._decode import Decoded, DecodeError, decode, to_rgb
from ._transform import center_crop_box, fit, resize, to_array

__all__ = ["DecodeError", "Decoded", "center_crop_box", "decode", "fit", "resize", "srgb_converter", "to_array",
           "to_rgb"]
