"""A titan export loads in Hugging Face transformers' LlamaForCausalLM with the same logits.

Runs with build/venv-hf (transformers 4.36.2 on Debian's torch 1.13; its own venv because it
pins an older tokenizers than the tokenizer tests use)."""
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    titan = sys.argv[1]
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([titan, "train", "--training.dataset", "synthetic", "--training.seq_len", "32",
                            "--training.steps", "3", "--checkpoint.enable_checkpoint", "--checkpoint.model_weights_only",
                            "--job.dump_folder", d], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"FAIL training with export: {r.stderr.strip()}")
            print("0 passed, 1 failed")
            return 1
        c = subprocess.run([sys.executable, os.path.join(ROOT, "bench/hf_check_transformers.py"),
                            os.path.join(d, "checkpoint/export-step-3"), os.path.join(d, "checkpoint/step-3")],
                           capture_output=True, text=True)
        print(c.stdout.strip(), c.stderr.strip()[-500:])
        ok = c.returncode == 0
        print(f"{'ok  ' if ok else 'FAIL'} transformers' LlamaForCausalLM gives titan's logits")
        print(f"{int(ok)} passed, {int(not ok)} failed")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
