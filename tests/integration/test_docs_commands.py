"""Every titan command README.md and docs/ show, run, so the pages stay true:
- a concrete command runs and succeeds (a training run with its size cut to 2 small steps);
  where the page shows its output (a fenced block: the command, then what it prints), the
  numbers printed are the page's;
- a synopsis (placeholders such as FILE or N, optional [--flags]) names flags its command's
  --help lists;
- a bare mention (`titan convert`) is a command whose --help works.
Commands of other tools (mpirun, srun, the setup scripts) are not run here: the dist tests and
CI's own run of the setup and test commands cover them."""
import glob
import os
import re
import shlex
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAILURES, PASSED = [], [0]
PLACEHOLDER = re.compile(r"(\[|\]|\||\.\.\.|\b[A-Z][A-Z_]*[A-Z]\b|\bN\b|\bT\b|\b[xX]\.toml\b|--section\.key|--bool\.key)")
# Flags that stand for any config key in a synopsis.
KEY_PLACEHOLDERS = {"--section.key", "--bool.key"}
SMALL_TRAIN = ["--training.steps", "2", "--training.seq_len", "32", "--training.batch_size", "2", "--metrics.log_freq", "1"]


def check(ok, what):
    if ok:
        PASSED[0] += 1
        print("ok  ", what, flush=True)
    else:
        FAILURES.append(what)
        print("FAIL", what, flush=True)


def shown_commands():
    """(page, command, the output lines the page shows under it) for every titan command in a
    fenced block or an inline code span."""
    out = []
    for page in ["README.md"] + sorted(glob.glob(os.path.join("docs", "*.md"))):
        text = open(os.path.join(ROOT, page)).read()
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
            lines = block.splitlines()
            for i, line in enumerate(lines):
                for part in line.split("&&"):
                    cmd = part.split("  #")[0].strip().rstrip("\\").strip()  # a continued line: its first part
                    if re.match(r"^(\./)?(build/cpu/)?titan\b", cmd) or cmd.startswith("python3 scripts/"):
                        shown = []
                        for follow in lines[i + 1:]:
                            if re.match(r"^(\./)?(build/cpu/)?titan\b", follow.strip()):
                                break
                            shown.append(follow)
                        out.append((page, cmd, [s for s in shown if s.strip()], True))
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for span in re.findall(r"`([^`\n]+)`", prose):
            span = span.strip()
            if re.match(r"^(build/cpu/)?titan(\s|$)", span) or span.startswith("python3 scripts/"):
                out.append((page, span, [], False))
    return out


def numbers(text):
    return [float(x) for x in re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", text)]


def run(argv, tmp, timeout=300):
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="2", TMPDIR=tmp))


def titan_argv(titan, cmd):
    words = shlex.split(cmd)
    if words[0].endswith("titan"):
        return [titan] + words[1:]
    return ["/usr/bin/python3"] + words[1:]  # python3 scripts/...


def subcommand(argv):
    """The command words before the first flag or placeholder: titan estimate, titan tokenizer train."""
    out = []
    for w in argv:
        if w.startswith("-") or PLACEHOLDER.search(w):
            break
        out.append(w)
    return out


def check_synopsis(page, cmd, argv):
    base = subcommand(argv)
    h = subprocess.run(base + ["--help"], capture_output=True, text=True, cwd=ROOT)
    flags = sorted(set(re.findall(r"(--[a-z][a-z0-9_.-]*)", cmd)) - {"--help"} - KEY_PLACEHOLDERS)
    help_text = h.stdout + h.stderr
    missing = [f for f in flags if f not in help_text and not re.match(r"--[a-z_0-9]+\.[a-z_0-9]+", f)]
    # A --section.key is a config key: train --help lists every one.
    keys = [f for f in flags if re.match(r"--[a-z_0-9]+\.[a-z_0-9]+", f)]
    if keys:
        train_help = subprocess.run([argv[0], "train", "--help"], capture_output=True, text=True).stdout
        missing += [k for k in keys if k not in train_help]
    check(h.returncode == 0 and not missing,
          f"{page}: `{cmd}`: {' '.join(os.path.basename(w) for w in base)} --help works and lists "
          f"{flags or 'its flags'} (missing {missing})")


def check_runs(page, cmd, argv, shown, tmp, n):
    words = [os.path.basename(w) for w in subcommand(argv)]
    extra = []
    if words[:2] == ["titan", "train"] and "--help" not in argv:
        extra = SMALL_TRAIN + ["--job.dump_folder", os.path.join(tmp, f"run{n}")]
    r = run(argv + extra, tmp)
    ok = r.returncode == 0
    detail = (r.stderr.strip() or r.stdout.strip())[-300:]
    shown = shown if numbers(" ".join(shown)) else []  # a page that shows no figures has nothing to compare
    if ok and shown:
        want = numbers(" ".join(shown))
        got = numbers(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else []
        ok = want == got[-len(want):] if want else True
        detail = f"the page shows {want}, it prints {got}"
    check(ok, f"{page}: `{cmd}` runs{' and prints what the page shows' if shown else ''} ({detail})")


def main():
    titan = sys.argv[1]
    if not os.path.exists(os.path.join(ROOT, "data", "c4_test")):
        print("note: data/c4_test is not built: commands training on it will fail (scripts/build_default_corpus.sh)")
    seen = set()
    with tempfile.TemporaryDirectory() as tmp:
        for n, (page, cmd, shown, fenced) in enumerate(shown_commands()):
            if (cmd, tuple(shown)) in seen:
                continue
            seen.add((cmd, tuple(shown)))
            argv = titan_argv(titan, cmd)
            is_synopsis = any(PLACEHOLDER.search(w) for w in shlex.split(cmd)[1:])
            # Prose names commands in passing (`titan inspect --verify`): it runs those that are
            # whole (a config to read, or nothing to give); the others' flags must exist.
            whole = fenced or "--config" in cmd or argv[1:2] in (["--version"], ["estimate"]) or "--help" in argv
            is_synopsis = is_synopsis or (not whole and any(w.startswith("--") for w in argv[1:]))
            if is_synopsis:
                check_synopsis(page, cmd, argv)
            elif len(argv) <= 3 and not any(w.startswith("-") for w in argv[1:]) and not shown:
                h = subprocess.run(argv + ["--help"], capture_output=True, text=True, cwd=ROOT)  # a mention
                check(h.returncode == 0 and h.stdout.strip() != "", f"{page}: `{cmd}` is a command (--help works)")
            else:
                check_runs(page, cmd, argv, shown, tmp, n)
    print(f"{PASSED[0]} passed, {len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
