"""What surrounds the UNet in a latent pipeline: the frozen autoencoder (AutoencoderKL, VQModel), the frozen
text encoder and tokenizer, the captions, and the on-disk cache of latents and prompt embeddings.

BinaryDM binarizes the UNet only (Zheng et al., Sec. 5: LDM-4, LDM-8); these parts stay full precision.
"""

from .components import (
    AUTOENCODER_CLASSES,
    Components,
    autoencoder_class,
    decode_latents,
    encode_images,
    load_components,
)

__all__ = ["AUTOENCODER_CLASSES", "Components", "autoencoder_class", "decode_latents", "encode_images",
           "load_components"]
