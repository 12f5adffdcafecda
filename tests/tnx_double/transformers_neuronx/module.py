"""save_pretrained_split: config.json plus a directory pytorch_model.bin/ with one file per
tensor and key_to_filename.json. Writes no tokenizer."""

from __future__ import annotations

import json
import os

import torch


def save_pretrained_split(model, save_directory):
    os.makedirs(os.path.join(save_directory, "pytorch_model.bin"), exist_ok=True)
    model.config.save_pretrained(save_directory)
    key_to_filename = {}
    for i, (key, tensor) in enumerate(model.state_dict().items()):
        name = f"p{i}.{key}"
        torch.save(tensor.clone(), os.path.join(save_directory, "pytorch_model.bin", name))
        key_to_filename[key] = name
    with open(os.path.join(save_directory, "pytorch_model.bin", "key_to_filename.json"), "w") as f:
        json.dump(key_to_filename, f)
