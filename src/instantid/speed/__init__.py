"""Speed levers: the exact fast path, lossy quantization, few-step presets."""
