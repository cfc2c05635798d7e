"""The paper's boxes: the face adapter (Resampler + decoupled attention weights), the attention processors,
one denoising step (UNet + IdentityNet + face tokens) and the keypoint picture. Depends on nothing above it."""
