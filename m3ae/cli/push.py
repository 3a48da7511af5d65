"""Upload a model folder to the Hugging Face Hub (a thin wrapper over ``HfApi.upload_folder``).

The folder must be complete: config.json, model.safetensors and README.md (the model card that
fine-tuning writes). Authentication is huggingface_hub's: ``huggingface-cli login``, ``HF_TOKEN``
or --token. Training leftovers (checkpoints, logs) are never uploaded.

Example: m3ae push runs/vqa_rad/best my-org/m3ae-vqa-rad --private
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the push options."""
    parser.add_argument("folder", metavar="DIR", help="model folder (save_pretrained output with README.md)")
    parser.add_argument("repo_id", metavar="REPO_ID", help="target model repository, org/name")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--token", default=None, help="Hub token (default: the stored login or HF_TOKEN)")
    parser.add_argument("--message", default=None, help="commit message")
    parser.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded, send nothing")


def run(args: argparse.Namespace) -> int:
    """Checks the folder, then creates the repository (if needed) and uploads in one commit."""
    from m3ae.weights.hub import plan_push, push_to_hub

    plan = plan_push(args.folder, args.repo_id, args.private, args.message)
    if args.dry_run:
        print(f"would upload {len(plan.files)} files to {plan.repo_id}:")
        print("\n".join(f"  {f}" for f in plan.files))
        return 0
    info = push_to_hub(args.folder, args.repo_id, private=args.private, token=args.token,
                       commit_message=args.message)
    print(f"uploaded {len(plan.files)} files to {plan.repo_id}: {getattr(info, 'commit_url', info)}")
    return 0
