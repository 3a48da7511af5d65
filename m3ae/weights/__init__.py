"""Reading and writing weights: our safetensors folders, official M3AE checkpoints, CLIP."""
