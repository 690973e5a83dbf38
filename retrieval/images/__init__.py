"""Images: decode any file a user may have into an upright RGB picture, then into a model input.

    decoding   formats allowed and refused, upright 8-bit RGB, BadImageError with the fix
    geometry   patch-multiple sizes, crops, resizing and normalising for the model
    scope      Pillow's process-wide bomb limit and warnings hook, held around decoding (one
               counted scope shared by all threads)
    readers    files read once (hashed, decoded, prepared) by decoder threads or processes

Every failure becomes a `BadImageError` that names the file, the reason and the fix. Nothing
here changes Pillow's global settings except inside `pixel_limit` (or a decoder process's
`worker_init`). No torch: decoder processes import this package alone.
"""

from .decoding import (ALLOWED_FORMATS, IMAGE_EXTENSIONS, RAW_EXTENSIONS, decode, load_image, register_heif,
                       to_rgb)
from .geometry import (Box, crop_box, crop_pixels, model_pixels, normalize, prepare, preprocess, resize_for_model, scaled_size,
                       target_size)
from .readers import EncodedJpeg, PreparedFile, model_reader, prepare_bytes, read_bytes, read_file
from .scope import DECODER_THREADS, pixel_limit, worker_init

__all__ = [
    "ALLOWED_FORMATS", "Box", "DECODER_THREADS", "EncodedJpeg", "IMAGE_EXTENSIONS", "PreparedFile", "RAW_EXTENSIONS",
    "crop_box", "crop_pixels", "decode", "load_image", "model_pixels", "model_reader", "normalize", "pixel_limit", "prepare", "prepare_bytes",
    "preprocess", "read_bytes", "read_file", "register_heif", "resize_for_model", "scaled_size", "target_size", "to_rgb",
    "worker_init",
]
