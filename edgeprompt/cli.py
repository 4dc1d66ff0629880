"""The ``edgeprompt`` command: a thin argparse layer over the library.

Each ``cmd_*`` parses, calls one library entry point and prints its result; decisions (what passes,
what is refused) are the library's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

from edgeprompt.core.constants import BACKENDS, BANK_ENV, DEFAULT_MODEL, BundleKeys, FileKeys, ModelKeys, ParityKeys, TaskKeys, TaskKind
from edgeprompt.core.errors import EdgePromptError, TrainingInterrupted


def _default_bank() -> str:
    return os.environ.get(BANK_ENV, "edgeprompt-bank")


def _size(s: str) -> int | float:
    """A split size: a count (1 or more, whole) or a fraction in [0, 1)."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if v != v or v < 0 or v in (float("inf"),) or (v >= 1 and v != int(v)):
        raise argparse.ArgumentTypeError(f"{s!r}: give a count (e.g. 100) or a fraction in [0, 1) (e.g. 0.1)")
    return int(v) if v >= 1 else v


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="'default' (SmolLM2-135M-Instruct, embedded), a transformers folder or a .gguf file of the llama family"
    )


def _add_bank(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bank", default=_default_bank(), help=f"prompt bank folder (default: ${BANK_ENV} or ./edgeprompt-bank)")


def _add_task_format(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("task format (for --data FILE; the built-in 'tweets' has its own)")
    g.add_argument("--kind", choices=[k.value for k in TaskKind], default=TaskKind.CLASSIFICATION.value)
    g.add_argument("--template", help="input template containing {text}, e.g. 'Review: {text}\\nStars:' (\\n and \\t are turned into newline and tab)")
    g.add_argument("--instruction", help="plain instruction for the zero-shot baseline and init=text")
    g.add_argument("--labels", help="comma-separated label names in order (default: the distinct values, sorted)")
    g.add_argument("--verbalizer", action="append", default=[], metavar="LABEL=TEXT", help="what the model says for LABEL (default ' LABEL'); repeatable")


def _unescape(s: str | None) -> str | None:
    """Shells pass '\\n' literally; templates mean a newline (as llama.cpp's --escape does)."""
    return None if s is None else s.replace("\\n", "\n").replace("\\t", "\t")


def _spec_from_args(args, data_source: str):
    from edgeprompt.core.data import BUILTIN_TASKS
    from edgeprompt.core.tasks import TaskSpec

    given = any([args.template, args.instruction, args.labels, args.verbalizer]) or args.kind != TaskKind.CLASSIFICATION.value
    if data_source in BUILTIN_TASKS:
        if given:
            raise EdgePromptError(f"the built-in task {data_source!r} has a fixed format; --template/--labels/... apply to --data FILE.")
        return None
    if not given:
        return None
    verbs = {}
    for v in args.verbalizer:
        if "=" not in v:
            raise EdgePromptError(f"--verbalizer {v!r} must look like LABEL=TEXT.")
        k, t = v.split("=", 1)
        verbs[k] = _unescape(t)
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else []
    kind = TaskKind(args.kind)
    if kind == TaskKind.CLASSIFICATION and not labels:
        raise EdgePromptError("with --template or --instruction for a classification task, also pass --labels.")
    return TaskSpec(
        kind=kind,
        template=_unescape(args.template) or ("{text}\nLabel:" if kind == TaskKind.CLASSIFICATION else "{text}\n"),
        instruction=_unescape(args.instruction) or "",
        labels=labels,
        verbalizers=verbs,
    )


def _load_data(args, spec=None):
    """The dataset of ``--data`` and the arguments that rebuild it; ``spec`` (a task's) wins over flags."""
    from edgeprompt.core.data import BUILTIN_TASKS, load_dataset

    spec = spec or _spec_from_args(args, args.data)
    if args.data in BUILTIN_TASKS:
        load_args = {"source": args.data, "seed": args.data_seed}
    else:
        load_args = {
            "source": os.path.abspath(args.data),
            "text_column": args.text_column,
            "label_column": args.label_column,
            "seed": args.data_seed,
            "dev": args.dev,
            "test": args.test,
            "kind": args.kind,
            "stratify": True,
        }
    kw = {k: v for k, v in load_args.items() if k != "source"}
    return load_dataset(load_args["source"], spec=spec, **kw), load_args


def cmd_train(args) -> int:
    from edgeprompt.core.bank import PromptBank
    from edgeprompt.core.methods import all_methods, config_from_dict, get_method
    from edgeprompt.train.loop import TrainConfig, adapt_to_dataset, dev_resolution_note, label_counts, resolved
    from edgeprompt.train.models import FrozenLM
    from edgeprompt.train.workflows import format_reports, train_task

    if args.threads is not None:
        if args.threads < 1:
            raise EdgePromptError(f"--threads {args.threads}: give 1 or more.")
        import torch

        torch.set_num_threads(args.threads)
    spec_m = get_method(args.method)
    mcfg = {"num_virtual_tokens": args.num_virtual_tokens}
    if args.init:
        mcfg["init"] = args.init
    if args.init_text:
        mcfg["init_text"] = args.init_text
    # method-specific options go to the method's config, which refuses the ones it does not have
    opts = {
        "projection": False if args.no_projection else None,
        "encoder_hidden_size": args.encoder_hidden_size,
        "encoder": args.encoder,
        "mlp_lr_ratio": args.mlp_lr_ratio,
    }
    given = {k: v for k, v in opts.items() if v is not None}
    have = {f.name for f in dataclasses.fields(spec_m.config_cls)}
    if set(given) - have:
        flags = ", ".join("--no-projection" if k == "projection" else "--" + k.replace("_", "-") for k in sorted(set(given) - have))
        owners = [m for m in all_methods() if set(given) - have <= {f.name for f in dataclasses.fields(get_method(m).config_cls)}]
        raise EdgePromptError(f"{flags} do not apply to --method {spec_m.name}" + (f"; they are options of {', '.join(owners)}." if owners else "."))
    mcfg.update(given)
    method_config = config_from_dict(spec_m.config_cls, mcfg)
    given = {k: getattr(args, k) for k in ("steps", "eval_every", "warmup_steps", "max_length") if getattr(args, k) is not None}
    tcfg = TrainConfig(
        batch_size=args.batch_size,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        balance=args.balance,
        select=args.select,
        calibration=args.calibration,
        **given,
    )
    bank = PromptBank(args.bank)
    data, load_args = _load_data(args)
    name = args.name or f"{data.name}-{spec_m.name.split('_')[0]}"
    print(f"data: {data.name}: {len(data.train)} train / {len(data.dev)} dev / {len(data.test)} test", file=sys.stderr)
    lm = FrozenLM.load(args.model)
    print(f"model: {lm.info.name} (fingerprint {lm.info.fingerprint[:16]})", file=sys.stderr)
    tcfg, notes = adapt_to_dataset(lm, data, tcfg, set(given))
    balance, select = resolved(tcfg, data)
    if data.spec.kind == TaskKind.CLASSIFICATION:
        counts = label_counts(data)
        loss = {"weights": "weighted by class", "sampling": "unweighted, on class-balanced batches"}.get(balance, "unweighted")
        notes.append(f"labels {', '.join(f'{k} {v}' for k, v in counts.items())}: loss {loss}, kept state by dev {select}")
        thin = dev_resolution_note(data, tcfg)
        if thin:
            notes.append(thin)
    for note in notes:
        print(f"  {note}", file=sys.stderr)
    against = None
    if args.against:
        from edgeprompt.export.gguf.against import load_against

        against = load_against(lm, args.against)
        print(f"training against {args.against}: {against['format']} {against['quant']} weights, dequantized", file=sys.stderr)
    task, summary = train_task(
        lm,
        data,
        load_args,
        spec_m.name,
        method_config,
        tcfg,
        bank,
        name,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.quiet,
        evaluate_test=not args.no_test,
        against=against,
    )
    print(f"saved task {name!r} ({spec_m.name}, P={task.num_virtual_tokens}) to bank {bank.root} after {summary['wall_time_s']:.0f} s of training")
    if "reports" in summary:
        print(f"test split of {data.name}:")
        print(format_reports(task.spec, summary["reports"]))
    return 0


def cmd_eval(args) -> int:
    from edgeprompt.core.bank import PromptBank
    from edgeprompt.core.data import dataset_for_task
    from edgeprompt.train.models import FrozenLM
    from edgeprompt.train.workflows import evaluate_task, format_reports

    bank = PromptBank(args.bank)
    task = bank.task(args.task)
    if args.data:
        data, _ = _load_data(args, spec=task.spec)
    else:
        data = dataset_for_task(task)
    if args.limit is not None and args.limit < 1:
        raise EdgePromptError(f"--limit {args.limit}: give 1 or more.")
    examples = getattr(data, args.split)[: args.limit] if args.limit else getattr(data, args.split)
    lm = FrozenLM.load(args.model)
    rep = evaluate_task(lm, task, examples, max_length=args.max_length, baseline=not args.no_baseline, train=data.train)
    if args.json:
        out = {"task": args.task, "split": args.split, "metrics": rep["task"], "zero_shot": rep["zero_shot"]}
        out.update({k: rep[k] for k in ("zero_shot_calibrated", "zero_shot_calibration", "zero_shot_calibrations")})
        print(json.dumps(out, indent=2))
    else:
        print(f"task {args.task!r} on the {args.split} split of {data.name} ({len(examples)} examples):")
        print(format_reports(task.spec, rep["reports"]))
    return 0


def cmd_bank(args) -> int:
    from edgeprompt.core.bank import PromptBank, bank_size_bytes

    bank = PromptBank(args.bank)
    if args.bank_cmd == "list":
        info = bank.base_model()
        if info is None:
            print(f"bank {bank.root}: empty (no bank.json)")
            return 0
        print(f"bank {bank.root}  base model: {info.name}  fingerprint {info.fingerprint[:16]}")
        rows = [("task", "method", "kind", "P", "test acc", "zero-shot", "size", "created")]
        for t in bank.tasks():
            m = t.manifest.get(TaskKeys.METRICS) or {}
            acc = (m.get("test") or {}).get("accuracy")
            zs = (m.get("zero_shot_test") or {}).get("accuracy")
            rows.append(
                (
                    t.name,
                    t.method,
                    t.manifest[TaskKeys.KIND],
                    str(t.num_virtual_tokens),
                    f"{acc:.1%}" if acc is not None else "-",
                    f"{zs:.1%}" if zs is not None else "-",
                    f"{bank_size_bytes(t) / 1024:.0f} KiB",
                    t.manifest.get(TaskKeys.CREATED, "-"),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        return 0
    if args.bank_cmd == "show":
        t = bank.task(args.name)
        m = dict(t.manifest)
        if not args.full and isinstance(m.get(TaskKeys.TRAINING), dict):
            m[TaskKeys.TRAINING] = {k: v for k, v in m[TaskKeys.TRAINING].items() if k != "history"}
        print(json.dumps(m, indent=2))
        return 0
    if args.bank_cmd == "remove":
        bank.remove(args.name)
        print(f"removed task {args.name!r} from {bank.root}")
        return 0
    if args.bank_cmd == "import-peft":
        from edgeprompt.core.tasks import TaskSpec
        from edgeprompt.train.models import FrozenLM
        from edgeprompt.train.peft_interop import import_peft

        spec = _spec_from_args(args, "") or TaskSpec(kind=TaskKind.GENERATION, template="{text}")
        lm = FrozenLM.load(args.model)
        t = import_peft(args.dir, bank, args.name, lm.info, spec, overwrite=args.overwrite)
        print(f"imported {args.dir} as task {t.name!r} ({t.method}, P={t.num_virtual_tokens}) into {bank.root}")
        return 0
    if args.bank_cmd == "export-peft":
        from edgeprompt.train.models import FrozenLM, resolve_model_dir
        from edgeprompt.train.peft_interop import export_peft

        lm = FrozenLM.load(args.model)
        out = export_peft(bank.task(args.name), args.output, str(resolve_model_dir(args.model)), lm.info, overwrite=args.overwrite)
        print(f"wrote PEFT checkpoint {out} (load with peft.PeftModel.from_pretrained(model, {str(out)!r}))")
        return 0
    raise AssertionError(args.bank_cmd)


def cmd_models(args) -> int:
    from edgeprompt.train.models import cache_dir, convert_gguf, default_gguf_path, list_cached_models, resolve_model_dir

    if args.models_cmd == "list":
        try:
            g = default_gguf_path()
            print(f"default: SmolLM2-135M-Instruct Q4_1 GGUF at {g}")
        except EdgePromptError as e:
            print(f"default: not installed ({e})")
        print(f"converted models in {cache_dir() / 'models'}:")
        for m in list_cached_models():
            print(f"  {m['path']}  ({m.get('architecture')}, from {m.get('source')})")
        return 0
    if args.models_cmd == "convert":
        from pathlib import Path

        if args.source == DEFAULT_MODEL:
            path = resolve_model_dir(DEFAULT_MODEL) if not args.force else convert_gguf(default_gguf_path(), "smollm2-135m-instruct-q4_1", force=True)
        else:
            src = Path(args.source)
            if src.suffix.lower() != ".gguf":
                raise EdgePromptError(f"{src}: convert takes a .gguf file or 'default' (transformers folders are used as they are).")
            path = convert_gguf(src, force=args.force)
        print(path)
        return 0
    raise AssertionError(args.models_cmd)


def cmd_export(args) -> int:
    from edgeprompt.export.writer import ExportConfig, export_bundle

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    cfg = ExportConfig(
        format=args.format,
        quant=args.quant or ("fp32" if args.format == "onnx" else "q8_0"),
        tasks=tasks,
        with_kv=args.with_kv,
        virtual_tokens=args.virtual_tokens,
        probes_per_task=args.probes,
        threads=args.threads,
        embeddings=args.embeddings,
        accuracy_level=args.accuracy_level,
    )
    bank = None if args.no_bank else args.bank
    res = export_bundle(args.output, bank=bank, model=args.model, config=cfg, overwrite=args.overwrite, log=lambda s: print(s, file=sys.stderr))
    m = res.manifest
    size = sum(f[FileKeys.BYTES] for f in m[BundleKeys.FILES].values())
    K = ParityKeys
    print(f"bundle {res.path}: {cfg.format} {cfg.quant}, {len(m[BundleKeys.TASKS])} task(s), {size / 2**20:.1f} MiB, {res.timings['total_s']} s")
    print(f"tensor types written: {m[BundleKeys.MODEL][ModelKeys.TENSOR_TYPES]}")
    for task, r in m[BundleKeys.PARITY].items():
        name = task or "(plain model)"
        acc = "" if r[K.ACCURACY_REFERENCE] is None else f", accuracy {r[K.ACCURACY_REFERENCE]:.2f} -> {r[K.ACCURACY_EXPORT]:.2f}"
        print(f"  parity {name}: max |dlogit| {r[K.MAX_ABS_LOGIT_DIFF]:.2e}, top-1 agreement {r[K.TOP1_AGREEMENT]:.0%}{acc} ({r[K.PROBES]} probes)")
    vt = m[BundleKeys.MODEL].get(ModelKeys.VIRTUAL_TOKENS)
    if vt:
        for task, ids in vt.items():
            print(f"  virtual tokens of {task}: ids {ids[0]}..{ids[-1]} (prepend them; mask them when sampling: logit_bias)")
    return 0


def _open_runtime(args):
    from edgeprompt.runtimes import open_bundle

    return open_bundle(args.bundle, backend=args.backend, threads=args.threads, cache_mb=args.cache_mb, n_ctx=args.n_ctx, prefix_dir=args.prefix_dir)


def cmd_run(args) -> int:
    rt = _open_runtime(args)
    try:
        text = args.text if args.text != "-" else sys.stdin.read()
        task = args.task
        if task is not None and not args.generate and rt.task_info(task)["kind"] == TaskKind.CLASSIFICATION.value:
            out = rt.classify(task, text, truncate=args.truncate)
            if args.json:
                print(json.dumps(out.to_dict()))
            else:
                probs = "  ".join(f"{k} {v:.3f}" for k, v in sorted(out.probabilities.items(), key=lambda kv: -kv[1]))
                print(f"{out.label}\t({probs})")
            return 0
        for piece in rt.generate(
            task,
            text,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            truncate=args.truncate,
        ):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    finally:
        rt.close()


def cmd_verify(args) -> int:
    """Check a bundle on this device: every file's sha256, then the parity probes against the torch reference."""
    from edgeprompt.core.parity import judge

    rt = _open_runtime(args)
    try:
        rt.bundle.verify_files()  # every file's sha256 now (opening hashes the tasks' lazily)
        res = rt.check_parity()
    finally:
        rt.close()
    verdicts = judge(res, rt.bundle.parity())
    for task, v in verdicts.items():
        r, rec = v.result, v.recorded
        was = f" (at export: {rec.max_abs_logit_diff:.2e}, {rec.top1_agreement:.0%})" if rec else ""
        print(f"{'ok  ' if v.ok else 'FAIL'} {task or '(plain model)'}: max |dlogit| {r.max_abs_logit_diff:.2e}, top-1 agreement {r.top1_agreement:.0%}{was}")
    ok = all(v.ok for v in verdicts.values())
    print(f"bundle {args.bundle}: files verified, parity {'ok' if ok else 'FAILED'} on {rt.backend.name}")
    return 0 if ok else 1


def cmd_android_demo(args) -> int:
    from edgeprompt.android_demo import cli

    return cli(args)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def cmd_serve(args) -> int:
    from edgeprompt.runtimes.limits import Limits
    from edgeprompt.runtimes.server import make_server

    limits = Limits(**{f: getattr(args, f) for f in Limits.__dataclass_fields__}).check()  # before the model loads
    rt = _open_runtime(args)
    key = args.api_key or os.environ.get("EDGEPROMPT_API_KEY") or None
    try:
        srv = make_server(rt, args.host, args.port, limits=limits, api_key=key, allow_open=args.no_api_key)
    except EdgePromptError:
        rt.close()
        raise
    signal.signal(signal.SIGTERM, _interrupt)  # stop as Ctrl-C does: requests in flight finish
    try:
        srv.start()
        host, port = srv.server_address
        print(
            f"edgeprompt serving {args.bundle} ({rt.backend.name}, {len(rt.tasks)} tasks) on http://{host}:{port} "
            f"(OpenAI-compatible base_url http://{host}:{port}/v1)",
            file=sys.stderr,
            flush=True,
        )
        srv.wait()
    except KeyboardInterrupt:
        pass
    finally:
        srv.shutdown()
        rt.close()
    return 0


def _ints(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of integers") from None


def cmd_profile(args) -> int:
    from edgeprompt.profile import devices
    from edgeprompt.profile.run import ProfileConfig, profile_bundles

    if args.list_devices:
        for name in devices.builtin_names():
            d = devices.load(name)
            print(f"{name:<18} {d.get('title', '')}")
        return 0
    if args.calibrate:
        return _calibrate(args)
    if not args.bundles:
        raise EdgePromptError("profile needs at least one BUNDLE (or --calibrate, or --list-devices).")
    if not args.out:
        raise EdgePromptError("profile needs --out DIR for its report.")
    kw = {}
    for flag in ("threads", "P", "text_lengths", "tasks"):
        v = getattr(args, flag)
        if v is not None:
            kw[flag] = v
    for flag in ("decode", "reps", "cache_mb", "n_ctx", "eval_n"):
        v = getattr(args, flag)
        if v is not None:
            kw[flag] = v
    if args.devices is not None:
        kw["devices"] = [d for d in args.devices.split(",") if d]
    cfg = ProfileConfig.quick(**kw) if args.quick else ProfileConfig(**kw)
    t0 = time.perf_counter()
    try:
        res = profile_bundles(
            args.bundles, args.out, cfg, force=args.force, device_files=args.device or [], log=lambda s: print(s, file=sys.stderr, flush=True)
        )
    except KeyboardInterrupt:
        print(f"edgeprompt: interrupted; the partial results are in {args.out}/results.json (its 'missing' says what was not measured).", file=sys.stderr)
        return 130
    print(f"wrote {args.out}/report.md, report.html and results.json in {time.perf_counter() - t0:.0f} s")
    for line in res.get("headline", [])[:8]:
        print(" -", line)
    return 0


def cmd_demo(args) -> int:
    from edgeprompt.demo import run_demo

    r = run_demo(args.dir, args.bank, args.out, steps=args.steps, log=lambda s: print(s, flush=True))
    t = r["timings"]
    print(
        f"\ndone in {t['total_s'] / 60:.1f} min (train {t['train_s']:.0f} s, export {t['export_s']:.0f} s, "
        f"classify {t['classify_s']:.0f} s, profile {t['profile_s']:.0f} s). The report: {r['report']}"
    )
    for line in r["headline"]:
        print(" -", line)
    return 0


def _calibrate(args) -> int:
    """Measure this device (bandwidth per thread count; with a bundle, its prefill throughput) into a profile."""
    import json

    from edgeprompt.core.files import atomic_write_bytes
    from edgeprompt.profile import devices
    from edgeprompt.profile.costmodel import read_rate_bps
    from edgeprompt.profile.environment import environment, usable_cores
    from edgeprompt.profile.memory import bandwidth_gbs

    env = environment()
    threads = args.threads or list(range(1, usable_cores() + 1))
    bw = {t: bandwidth_gbs(t)["gbs"] for t in threads}
    cal, read = None, None
    if args.bundles:
        from edgeprompt.profile.bundle_profile import text_ids
        from edgeprompt.runtimes.runtime import open_bundle

        T = max(threads)
        with open_bundle(args.bundles[0], threads=T) as rt:
            n_params = rt.backend.memory().get("n_params")
            read = read_rate_bps(rt.bundle.model_file)
            if n_params:
                ids = text_ids(rt, 128)
                best = None
                for _ in range(3):
                    t = time.perf_counter()
                    rt.logits(None, rt.decode(ids))
                    dt = time.perf_counter() - t
                    best = dt if best is None else min(best, dt)
                cal = {"threads": T, "G_flops": 2 * n_params * len(ids) / best}
    prof = devices.calibrated(args.name or "this-device", env, bw, cal, read)
    out = Path(args.out or f"{prof['name']}.json")
    atomic_write_bytes(out, json.dumps(prof, indent=1).encode())
    print(f"wrote {out}: bandwidth {', '.join(f'{t} threads {v:.1f} GB/s' for t, v in bw.items())}; use it with --device {out}")
    return 0


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="a bundle folder written by `edgeprompt export`")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--threads", type=int, help="compute threads (default: cores up to 4, then one fewer; or $EDGEPROMPT_THREADS)")
    p.add_argument("--cache-mb", type=float, default=256.0, help="memory budget of the per-task prefix cache (LRU), MB")
    p.add_argument("--n-ctx", type=int, default=2048, help="llama.cpp context, tokens")
    p.add_argument(
        "--prefix-dir",
        help="keep computed prompt-tuning prefixes in this folder, so a cold task costs a file read instead of a prefill "
        "(keyed by model file, backend version and task; safe to delete)",
    )


def _lr_help() -> str:
    """``--lr``'s help, read from each registered method's ``default_lr()`` so it cannot go stale."""
    from edgeprompt.core.methods import all_methods, get_method

    def rate(spec) -> str:
        try:
            return f"{spec.config_cls().default_lr():g}"
        except Exception:  # a plug-in's config may need arguments or lack a default rate; every command builds
            return "its config's default_lr()"  # this parser, so help text must not be what breaks them

    rates = [f"{(s.aliases or (s.name,))[0]} {rate(s)}" for s in map(get_method, all_methods())]  # the names --method takes
    mlp = get_method("prefix_tuning").config_cls(encoder="mlp").default_lr()
    return (
        f"learning rate (default, per method: {'; '.join(rates)}; prefix with --encoder mlp or --no-projection {mlp:g}; "
        "from the sweeps in benchmarks/sweep.md and sweep_small.md)"
    )


def _subcommand(sub, name: str, help: str | None = None, **kw) -> argparse.ArgumentParser:
    """A subcommand whose own ``--help`` says what it does (argparse shows ``help`` only in the parent's list)."""
    kw.setdefault("description", help)
    return sub.add_parser(name, help=help, **kw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgeprompt", description="Train soft prompts and prefixes on a frozen LLM, export the model once, swap prompts per request on device."
    )
    p.add_argument("--version", action="version", version=f"edgeprompt {__import__('edgeprompt').__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = _subcommand(
        sub,
        "train",
        help="train a soft prompt or prefix on a frozen model and fold it into the bank",
        description="Train a prompt (only its parameters change), fold it into the bank, then report the test split next to the zero-shot baseline.",
    )
    _add_model(t)
    _add_bank(t)
    t.add_argument("--data", default="tweets", help="'tweets' (built-in 3-class sentiment) or a .csv/.tsv/.jsonl file")
    t.add_argument("--text-column", default="text")
    t.add_argument("--label-column", "--target-column", dest="label_column", default="label", help="label (classification) or target text (generation)")
    t.add_argument("--dev", type=_size, default=0.1, help="dev split: a count, or a fraction < 1 (files only)")
    t.add_argument("--test", type=_size, default=0.1, help="test split: a count, or a fraction < 1 (files only)")
    t.add_argument("--data-seed", type=int, default=0, help="seed of the train/dev/test split")
    _add_task_format(t)
    t.add_argument("--method", default="prompt", help="prompt (prompt tuning) or prefix (prefix tuning)")
    t.add_argument("--name", help="task name in the bank (default: DATA-METHOD)")
    t.add_argument("-P", "--num-virtual-tokens", type=int, default=20)
    t.add_argument("--init", help="prompt: text|labels|vocab|random; prefix: text|random (default text)")
    t.add_argument("--init-text", help="initialisation text (default: the task instruction)")
    t.add_argument("--no-projection", action="store_true", help="prefix: train the KV prefix directly, without the MLP")
    t.add_argument("--encoder-hidden-size", type=int, help="prefix: MLP width (default 512)")
    t.add_argument("--encoder", choices=["model+mlp", "mlp"], help="prefix: reparameterisation (default model+mlp; mlp is PEFT's)")
    t.add_argument("--mlp-lr-ratio", type=float, help="prefix, model+mlp: the MLP's lr as a fraction of --lr (default 1e-3)")
    t.add_argument("--steps", type=int, help="optimizer steps (default 200, fewer on small data: at most 10 epochs; said at the start)")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, help=_lr_help())
    t.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default 10, or a tenth of the steps)")
    t.add_argument(
        "--max-length",
        type=int,
        help="training only: longest input + label in tokens, longer texts are cut to fit (default 96, raised to the "
        "longest training example up to 512 when some are longer, and said at the start); eval and runtimes take texts whole",
    )
    t.add_argument(
        "--eval-every",
        type=int,
        help="dev evaluation every N steps (default 40: 5 times in 200 steps, and 5 times in a shortened run); the best dev state is kept",
    )
    t.add_argument(
        "--balance",
        choices=["auto", "weights", "sampling", "none"],
        default="auto",
        help="class weights in the loss (auto: when the labels are skewed 1.5:1 or more), or class-balanced batches (sampling)",
    )
    t.add_argument(
        "--select", choices=["auto", "accuracy", "macro_f1"], default="auto", help="dev metric that picks the kept state (auto: macro-F1 when skewed)"
    )
    t.add_argument(
        "--calibration",
        choices=["auto", "content_free", "train_prior", "on", "off"],
        default="auto",
        help="label-prior correction, stored in the task and applied everywhere: content_free (the prompt's answer to "
        "texts that say nothing; 'on' is this), train_prior (its mean answer on the training texts against their label "
        "frequencies), auto (train_prior, or content_free without training rows, kept when it scores as well as none on "
        "dev; none without dev examples), off",
    )
    t.add_argument("--checkpoint-every", type=int, default=50)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    t.add_argument(
        "--against",
        metavar="BUNDLE",
        help="train against a GGUF bundle's quantized weights (dequantized), so the prompt compensates for the quantization error",
    )
    t.add_argument("--resume", action="store_true", help="continue an interrupted run of --name from its checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a task of the same name")
    t.add_argument("--no-test", action="store_true", help="skip the test-split evaluation")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = _subcommand(sub, "eval", help="accuracy, macro-F1 and confusion matrix of a bank task, next to the zero-shot baseline")
    _add_model(e)
    _add_bank(e)
    e.add_argument("--task", required=True, help="task name in the bank")
    e.add_argument("--split", choices=["test", "dev", "train"], default="test")
    e.add_argument("--limit", type=int, help="evaluate the first N examples only")
    e.add_argument("--data", help="evaluate on other data (default: the split the task was trained on)")
    e.add_argument("--text-column", default="text")
    e.add_argument("--label-column", "--target-column", dest="label_column", default="label")
    e.add_argument("--dev", type=_size, default=0.1)
    e.add_argument("--test", type=_size, default=0.1)
    e.add_argument("--data-seed", type=int, default=0)
    _add_task_format(e)
    e.add_argument(
        "--max-length", type=int, default=None, help="cut texts to this many tokens, as training does (default: whole texts, as the runtimes take them)"
    )
    e.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the zero-shot baseline (scored raw and under each correction; its train prior reads up to 1000 training texts)",
    )
    e.add_argument("--json", action="store_true", help="print JSON")
    e.set_defaults(func=cmd_eval)

    b = _subcommand(sub, "bank", help="list, show, remove, import and export the tasks of a prompt bank")
    bsub = b.add_subparsers(dest="bank_cmd", required=True)
    bl = _subcommand(bsub, "list", help="the tasks, with method, P, accuracy and size")
    _add_bank(bl)
    bs = _subcommand(bsub, "show", help="one task's manifest (JSON)")
    _add_bank(bs)
    bs.add_argument("name")
    bs.add_argument("--full", action="store_true", help="include the training history")
    br = _subcommand(bsub, "remove", help="delete a task")
    _add_bank(br)
    br.add_argument("name")
    bi = _subcommand(bsub, "import-peft", help="import a PEFT prompt-tuning or prefix-tuning checkpoint (safetensors)")
    _add_bank(bi)
    _add_model(bi)
    bi.add_argument("dir", help="folder with adapter_config.json and adapter_model.safetensors")
    bi.add_argument("--name", required=True)
    bi.add_argument("--overwrite", action="store_true")
    _add_task_format(bi)
    be = _subcommand(bsub, "export-peft", help="write a task as a PEFT checkpoint that peft.PeftModel.from_pretrained loads")
    _add_bank(be)
    _add_model(be)
    be.add_argument("name")
    be.add_argument("-o", "--output", required=True, help="output folder (new or empty)")
    be.add_argument("--overwrite", action="store_true", help="replace a PEFT adapter already in the output folder")
    for sp in (bl, bs, br, bi, be):
        sp.set_defaults(func=cmd_bank)

    x = _subcommand(
        sub,
        "export",
        help="quantize and export the frozen model with the bank's tasks as an ONNX or GGUF bundle",
        description="Write a bundle: model file(s), tokenizer.json, the tasks and manifest.json with parity results. "
        "Quantizations: onnx fp32|int8|int4|int8-dynamic; gguf f32|f16|q8_0|q4_0|q4_k_m|source.",
    )
    _add_model(x)
    _add_bank(x)
    x.add_argument("--format", choices=["onnx", "gguf"], default="onnx")
    x.add_argument("--quant", help="quantization (default: onnx fp32, gguf q8_0)")
    x.add_argument("-o", "--output", required=True, help="bundle folder to write")
    x.add_argument("--tasks", help="comma-separated task names (default: all of the bank)")
    x.add_argument("--no-bank", action="store_true", help="export the plain model only (tasks can be added to a running runtime)")
    x.add_argument("--with-kv", action="store_true", help="also ship prompt-tuning tasks as KV prefixes computed by the exported model (no prefill per task)")
    x.add_argument("--virtual-tokens", action="store_true", help="gguf: fold prompt-tuning prompts into the vocabulary as extra token ids for stock llama.cpp")
    x.add_argument(
        "--embeddings",
        choices=["fp32", "fp16", "int8"],
        default="fp32",
        help="onnx: the embedding table as fp32, fp16 (half its bytes) or int8 in blocks of 32 with a scale each (Q8_0's layout, 28%%); the parity gate records the cost",
    )
    x.add_argument(
        "--accuracy-level",
        type=int,
        choices=[0, 1, 2, 3, 4],
        help="onnx int8/int4: MatMulNBits' activations, 0 fp32 (exact weights give exact logits; slower) or 4 int8 (the default; the integer kernels)",
    )
    x.add_argument("--probes", type=int, default=8, help="parity probes per task")
    x.add_argument("--threads", type=int)
    x.add_argument("--overwrite", action="store_true", help="replace OUTPUT (only once the new bundle is complete)")
    x.set_defaults(func=cmd_export)

    r = _subcommand(sub, "run", help="run a bundle's task on a text: label and probabilities, or streamed generation (no torch)")
    _add_runtime(r)
    r.add_argument("--task", help="task name (default: the plain model)")
    r.add_argument("text", help="the input text ('-' reads stdin)")
    r.add_argument("--generate", action="store_true", help="generate even for a classification task")
    r.add_argument("--max-new-tokens", type=int, default=64)
    r.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    r.add_argument("--top-k", type=int, default=0)
    r.add_argument("--top-p", type=float, default=1.0)
    r.add_argument("--seed", type=int)
    r.add_argument("--truncate", action="store_true", help="cut a text longer than the context instead of refusing it")
    r.add_argument("--json", action="store_true", help="classification result as JSON")
    r.set_defaults(func=cmd_run)

    v = _subcommand(sub, "verify", help="check a bundle on this device: file sha256s, then the parity probes against the stored torch reference")
    _add_runtime(v)
    v.set_defaults(func=cmd_verify)

    pf = _subcommand(
        sub,
        "profile",
        help="latency and memory profiles of bundles per arm (plain, hard prompt, prompt tuning cold/warm, virtual tokens, shipped KV, "
        "prefix tuning cold/warm), sweeps, a cost model and device projections: report.md, report.html, results.json",
    )
    pf.add_argument("bundles", nargs="*", metavar="BUNDLE", help="bundle folders (each profiled on its own backend)")
    pf.add_argument("--out", help="folder for report.md, report.html and results.json")
    pf.add_argument("--force", action="store_true", help="replace the report in an --out folder that is not empty")
    pf.add_argument("--quick", action="store_true", help="fewer repetitions and sweep points (about 2 minutes a bundle)")
    pf.add_argument("--threads", type=_ints, help="thread counts to sweep (default 1..cores)")
    pf.add_argument("--P", type=_ints, help="virtual tokens to sweep, synthetic tasks (default 5,10,20,50,100)")
    pf.add_argument("--text-lengths", type=_ints, help="user-text tokens to sweep (default 16,64,256)")
    pf.add_argument("--tasks", type=_ints, help="tasks in the bundle to sweep, per method (default 1,10,100,1000)")
    pf.add_argument("--decode", type=int, help="tokens decoded per request (default 32)")
    pf.add_argument("--reps", type=int, help="repetitions per figure, after one warm-up (default 5)")
    pf.add_argument("--cache-mb", type=float, help="the prefix cache's budget for the bank sweep (default 64)")
    pf.add_argument("--n-ctx", type=int, help="llama.cpp context (default 2048)")
    pf.add_argument(
        "--eval", dest="eval_n", type=int, metavar="N", help="also classify N test examples of each task through the runtime: accuracy and macro-F1"
    )
    pf.add_argument("--train-cost", action="store_true", help="also measure training step time and peak RSS per method and P (needs the train extra)")
    pf.add_argument("--train-model", default="default", help="--train-cost: the bundles' base model for training ('default' or a folder)")
    pf.add_argument("--devices", help="built-in device profiles to project onto, comma-separated (default: all; see --list-devices)")
    pf.add_argument("--device", action="append", help="a device profile file (from --calibrate on that device); repeatable")
    pf.add_argument("--list-devices", action="store_true", help="list the built-in device profiles")
    pf.add_argument(
        "--calibrate",
        action="store_true",
        help="measure this device and write its profile (--out FILE, --name NAME; with a BUNDLE, its prefill throughput too)",
    )
    pf.add_argument("--name", help="--calibrate: the device's name")
    pf.set_defaults(func=cmd_profile)

    dm = _subcommand(
        sub,
        "demo",
        help="the main job on the embedded default: train a prompt-tuning and a prefix-tuning task on the tweets (reused when present), "
        "export GGUF q8_0 and ONNX int8 bundles, classify tweets swapping tasks, profile both and write the report",
    )
    dm.add_argument("--dir", default=".", help="where the bank, the bundles and the report go (default: here)")
    dm.add_argument("--bank", default="edgeprompt-bank", help="the bank folder, under --dir")
    dm.add_argument("--out", default="edgeprompt-profile", help="the report folder, under --dir (replaced)")
    dm.add_argument("--steps", type=int, help="training steps per task (default: the training default, 200)")
    dm.set_defaults(func=cmd_demo)

    sv = _subcommand(
        sub,
        "serve",
        help="serve a bundle over HTTP: OpenAI-compatible /v1 (a task is a model), native /classify and /generate, Prometheus /metrics",
    )
    _add_runtime(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 for the network)")
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--api-key", help="require Authorization: Bearer KEY on every endpoint but /health (or $EDGEPROMPT_API_KEY; 16+ characters)")
    sv.add_argument("--no-api-key", action="store_true", help="allow serving a non-loopback --host without a key (a trusted network only)")
    from edgeprompt.runtimes.limits import Limits

    lim = Limits()
    for flag, kind, text in (
        ("max_body", int, "bytes of JSON per request"),
        ("body_timeout", float, "seconds a client may take to send its body (then 408)"),
        ("max_new_tokens", int, "tokens a request may generate"),
        ("concurrency", int, "requests computing at once (llama.cpp runs one at a time)"),
        ("queue", int, "requests waiting for a turn; more get 503 with Retry-After"),
        ("queue_timeout", float, "seconds a request may wait for its turn (then 503)"),
        ("request_timeout", float, "seconds of compute per request (then 504)"),
        ("idle_timeout", float, "seconds a kept-alive connection may stay idle"),
        ("max_connections", int, "connections open at once"),
    ):
        sv.add_argument("--" + flag.replace("_", "-"), dest=flag, type=kind, default=getattr(lim, flag), help=f"{text} (default {getattr(lim, flag):g})")
    sv.set_defaults(func=cmd_serve)

    from edgeprompt.android_demo import add_arguments

    ad = _subcommand(sub, "android-demo", help="build the web app that runs an ONNX bundle in a phone's browser (offline, installable); --serve serves it")
    add_arguments(ad)
    ad.set_defaults(func=cmd_android_demo)

    m = _subcommand(sub, "models", help="list base models, or convert a GGUF to a cached transformers folder")
    msub = m.add_subparsers(dest="models_cmd", required=True)
    _subcommand(msub, "list", help="the default model and the converted ones").set_defaults(func=cmd_models)
    mc = _subcommand(msub, "convert", help="convert 'default' or a .gguf once into the cache; prints the folder")
    mc.add_argument("source")
    mc.add_argument("--force", action="store_true", help="convert again even if cached")
    mc.set_defaults(func=cmd_models)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EdgePromptError as e:
        print(f"edgeprompt: error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:  # not an error: say how to continue
        print(f"edgeprompt: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("edgeprompt: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, permissions: the file is named in the message
        print(f"edgeprompt: error: {e.strerror or e} ({e.filename or 'no file named'}); nothing was left half-written.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
