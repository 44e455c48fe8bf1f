"""The ``megaportraits`` command: animate, demo, info (and benchmark when installed).

Every failure the user can cause prints one line, ``megaportraits: error: ...``, and exits 1
without a traceback and without leaving an output file (a full disk and an unwritable standard
output included). SIGINT, SIGTERM and SIGHUP save the frames done and exit 128 + the signal's
number (130, 143, 129). A reader that stops reading (``--json | head -1``) ends the command
quietly with 141, as SIGPIPE would. An existing output file is replaced, and the command says
so on stderr; the output may never be one of the inputs. Subcommands live in :data:`SUBCOMMANDS` (name -> (help, add_arguments, run));
another part of the package adds one by providing a module with ``add_arguments(parser)`` and
``run(args) -> int`` and listing it in :data:`EXTENSIONS`.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import signal
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import AnimationInterrupted, MegaportraitsError

PROG = "megaportraits"
ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_SOURCE = ASSETS / "demo_source.png"
DEMO_DRIVER = ASSETS / "demo_driver.mp4"


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line too, with where to look for help."""

    def error(self, message):
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


# ---- shared options ----------------------------------------------------------------------
def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    from .providers import PROVIDER_CHOICES

    p.add_argument("--provider", default="auto", choices=PROVIDER_CHOICES,
                   help="ONNX Runtime execution provider (default: auto, CUDA when available)")
    p.add_argument("--threads", type=_thread_count, default=0, metavar="N",
                   help="CPU threads for ONNX Runtime (default: 0, its own choice)")
    from .precision import PRECISION_CHOICES

    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                   help="which of the bundle's graph flavours run (default: auto, the fastest the provider runs "
                        "well: int8 on the CPU, fp16 on CUDA, else fp32); one the provider cannot run is refused")


def _thread_count(text: str) -> int:
    from .animator import MAX_THREADS

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads takes a whole number, not {text!r}") from None
    if not 0 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"--threads must be between 0 (ONNX Runtime's choice) and "
                                         f"{MAX_THREADS}, not {value}")
    return value


def _add_animation_options(p: argparse.ArgumentParser, crop_by_default: bool = True) -> None:
    motion = p.add_mutually_exclusive_group()
    motion.add_argument("--relative", dest="motion", action="store_const", const="relative",
                        help="apply the driver's change since its first frame to the source's own pose "
                             "and expression (default for a driver video)")
    motion.add_argument("--absolute", dest="motion", action="store_const", const="absolute",
                        help="use the driver's pose and expression as they are (default for a driver image)")
    if crop_by_default:
        p.add_argument("--no-crop", action="store_true",
                       help="inputs are already cropped to the face: do not detect faces")
    else:
        p.add_argument("--crop", dest="no_crop", action="store_false",
                       help="detect and crop the faces (the bundled clips are already framed like the training data)")
        p.set_defaults(no_crop=True)
    p.add_argument("--no-paste-back", action="store_true",
                   help="output the animated face crop instead of the whole source photo")
    p.add_argument("--centre-crop", action="store_true",
                   help="when no face is found, crop the centre of the image instead of failing")
    p.add_argument("--smooth", action="store_true", help="smooth pose and expression over time (One-Euro filter)")
    p.add_argument("--background", default="source", choices=("source", "generated"),
                   help="for a model that predicts a matte: put the animated person on the source photo's own "
                        "backdrop, inpainted where the person was (source, the default), or keep the "
                        "generator's background (generated); models without a matte always do the latter")
    p.add_argument("--no-enhance", action="store_true",
                   help="for a bundle with an enhancer: render at the base model's size instead of the enhancer's")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N driver frames")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _animator(args, bundle, motion: str):
    from .animator import Animator

    return Animator(bundle, provider=args.provider, threads=args.threads, motion=motion,
                    smooth=args.smooth, crop=not args.no_crop, paste_back=not args.no_paste_back,
                    face_fallback="centre" if args.centre_crop else "error", background=args.background,
                    enhance=not args.no_enhance, precision=args.precision)


# ---- animate -----------------------------------------------------------------------------
def _animate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="portrait photo (PNG, JPEG, ...), or an avatar's name with a student --bundle")
    p.add_argument("driver", help="driving video (any common format), or a single image")
    p.add_argument("-o", "--output", required=True,
                   help="output file: .mp4 for a driving video, an image (.png, .jpg) for a driving image")
    p.add_argument("--bundle", default=None, metavar="DIR", help="model bundle directory (default: the bundled demo model)")
    _add_runtime_options(p)
    _add_animation_options(p)


def _animate(args) -> int:
    return _run_animation(args, args.source, args.driver, args.output, args.bundle, users_photo=True)


SYNTHETIC_MODEL_NOTE = ("note: this model was trained only on synthetic rendered heads (as the bundled demo model), so a "
                        "real photo comes out as a rough, blurry face; for a real model convert official weights "
                        "(python -m megaportraits_export convert) or train on real talking-head video "
                        "(configs/paper512_voxceleb2.toml)")


def _run_animation(args, source, driver, output, bundle, users_photo: bool = False) -> int:
    from .files import check_output_path, check_readable_file
    from .images import OUTPUT_IMAGE_EXTENSIONS, is_image_path, load_image, save_image
    from .student import is_student_bundle

    student = bundle is not None and is_student_bundle(bundle)  # SOURCE is then one of its avatars' names
    single_image = is_image_path(driver)
    driver_role = "driver image" if single_image else "driver video"
    inputs = {driver_role: driver} if student else {"source image": source, driver_role: driver}
    check_output_path(output, OUTPUT_IMAGE_EXTENSIONS if single_image else (".mp4",), inputs=inputs)
    replacing = Path(output).exists()
    check_readable_file(driver, driver_role)
    if args.max_frames is not None and args.max_frames < 1:
        raise MegaportraitsError(f"--max-frames must be at least 1, not {args.max_frames}")
    source_image = None if student else load_image(source, "source image")
    driver_image = load_image(driver, "driver image") if single_image else None
    # a student sees only the driver image: absolute motion (an explicit --relative is refused)
    motion = args.motion or ("absolute" if single_image or student else "relative")
    with _animator(args, bundle, motion) as animator:
        if student:
            avatar = animator.prepare(source)
        else:
            if users_photo and animator.bundle.manifest.trained_on_synthetic_data:
                print(f"{PROG}: {SYNTHETIC_MODEL_NOTE}", file=sys.stderr)
            avatar = animator.prepare(source_image, source_path=source)
        if single_image:
            save_image(output, animator.animate_frame(avatar, driver_image), inputs=inputs)
            print(f"{PROG}: wrote {_shown(output)}" + (" (replaced the existing file)" if replacing else ""),
                  file=sys.stderr)
            return 0
        result = animator.animate_video(avatar, driver, output, max_frames=args.max_frames,
                                        progress=not args.quiet)
    audio = f", audio {result.audio}" if result.audio else ", no audio"
    damaged = ", the driver is truncated: see the warning" if result.damage else ""
    of_student = f", avatar {source!r} of the student" if student else ""
    replaced = "; replaced the existing file" if replacing else ""
    print(f"{PROG}: wrote {_shown(result.path)} ({result.frames} frames at {float(result.fps):g} fps{audio}{damaged}"
          f"{of_student}{replaced})", file=sys.stderr)
    return 0


def _shown(path) -> str:
    """A path as the user typed it, or quoted when it holds a newline or other control
    character (a message stays one line)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


# ---- demo --------------------------------------------------------------------------------
def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="megaportraits_demo.mp4", help="output video (default: %(default)s)")
    p.add_argument("--student", action="store_true",
                   help="run the bundled real-time student of the demo model (the demo portrait is its avatar)")
    _add_runtime_options(p)
    _add_animation_options(p, crop_by_default=False)


def _demo(args) -> int:
    from .bundle import find_bundle

    find_bundle(None)  # the one error for a demo model that is not installed
    missing = [p for p in (DEMO_SOURCE, DEMO_DRIVER) if not p.is_file()]
    if missing:
        raise MegaportraitsError(f"the bundled demo clips are not installed ({missing[0]} is missing); animate "
                                 "your own: megaportraits animate SOURCE DRIVER -o OUT")
    if args.student:
        from .manifest import load_manifest
        from .student import DEMO_STUDENT, is_student_bundle

        if not is_student_bundle(DEMO_STUDENT):
            raise MegaportraitsError(f"the bundled demo student is not installed (expected in {DEMO_STUDENT}); distill "
                                     "one: python -m megaportraits_export distill (see docs/student.md)")
        name = load_manifest(DEMO_STUDENT).avatar_names()[0]
        return _run_animation(args, name, DEMO_DRIVER, args.output, DEMO_STUDENT)
    return _run_animation(args, DEMO_SOURCE, DEMO_DRIVER, args.output, None)


# ---- info --------------------------------------------------------------------------------
def _info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default=None, metavar="DIR", help="bundle to describe (default: the bundled demo model)")
    p.add_argument("--provider", default="auto", help="provider choice to resolve (default: auto)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _info(args) -> int:
    info, ok = collect_info(args.bundle, args.provider)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return 0 if ok else 1


def collect_info(bundle_dir, provider: str) -> tuple[dict, bool]:
    """Everything ``info`` reports, and whether the named bundle (if any) is usable: "ok"
    exactly when :func:`megaportraits.bundle.validate_bundle` finds nothing wrong, which is
    what ``animate`` checks before it runs the bundle (with ``open_sessions``, so a graph
    ONNX Runtime refuses is found too). An unknown or unavailable ``provider``
    is the one-line :class:`ProviderError` (exit 1), as ``animate`` would give."""
    import onnxruntime as ort

    from . import bundle as bundles
    from .schema import AVATAR_GENERATOR_INPUTS, GENERATOR
    from .providers import available_providers, resolve_providers
    from .sessions import custom_op_status

    providers = resolve_providers(provider)
    status = custom_op_status()
    info = {
        "megaportraits": __version__,
        "onnxruntime": ort.__version__,
        "providers_available": available_providers(),
        "custom_op_library": {"available": status.available, "path": status.path, "reason": status.reason},
        "provider": {"choice": provider, "providers": providers},
    }
    if bundle_dir is None and not bundles.demo_bundle_installed():
        info["bundle"] = {"path": str(bundles.DEMO_BUNDLE), "default": True, "status": "not installed"}
        return info, True
    report = bundles.validate_bundle(bundle_dir, open_sessions=True)
    entry = {"path": str(report.directory), "default": bundle_dir is None}
    if not report.ok:
        entry.update(status="invalid", error=report.problems[0], problems=list(report.problems))
    else:
        manifest = report.manifest
        entry.update(status="ok", model=manifest.model_name, preset=manifest.preset,
                     image_size=manifest.image_size, precision=manifest.precision,
                     custom_op=manifest.custom_op, portable_graphs=manifest.has_portable,
                     graphs={r: {"file": g.file, "portable_file": g.portable_file, "precisions": list(g.precisions),
                                 "flavours": {f.precision: f.to_dict() for f in g.flavours}}
                             for r, g in manifest.graphs.items()},
                     matte=manifest.has_matte, enhanced_size=manifest.enhanced_size, runs_with=report.runs_with,
                     avatar_inputs=[t.name for t in manifest.graphs[GENERATOR].inputs
                                    if t.name in AVATAR_GENERATOR_INPUTS] if GENERATOR in manifest.graphs else [],
                     producer=manifest.producer, provenance=manifest.provenance)
    info["bundle"] = entry
    return info, report.ok


def _print_info(info: dict) -> None:
    lib = info["custom_op_library"]
    provider = info["provider"]
    bundle = info["bundle"]
    lines = [
        f"megaportraits {info['megaportraits']}, onnxruntime {info['onnxruntime']}",
        f"providers available: {', '.join(info['providers_available'])}",
        f"provider {provider['choice']}: {', '.join(provider['providers'])}",
        "custom-op library: " + (lib["path"] if lib["available"] else f"unavailable ({lib['reason']})"),
        f"bundle: {bundle['path']}" + (" (bundled demo model)" if bundle["default"] else ""),
        f"  status: {bundle['status']}" + (f": {bundle['error']}" if "error" in bundle else ""),
    ]
    lines += [f"  also: {problem}" for problem in bundle.get("problems", [])[1:]]
    if bundle["status"] == "ok":
        lines += [f"  model: {bundle['model']} ({bundle['preset']}), {bundle['image_size']}px, {bundle['precision']}",
                  f"  custom op: {bundle['custom_op'] or 'none (portable bundle)'}; runs with {bundle['runs_with']}",
                  "  matte: " + ("yes (composited onto the source's backdrop unless --background generated)"
                                 if bundle["matte"] else "no (the generator's image is shown as it is)"),
                  "  enhancer: " + (f"{bundle['image_size']} -> {bundle['enhanced_size']}px (frames at "
                                    f"{bundle['enhanced_size']}px unless --no-enhance)" if bundle["enhanced_size"]
                                    else "none")]
        if bundle["avatar_inputs"]:
            lines.append(f"  generator reads from the avatar: {', '.join(bundle['avatar_inputs'])}")
        lines += [f"  {role}: {g['file']}" + (f" (portable: {g['portable_file']})" if g["portable_file"] else "")
                  + "".join(f"; {p}: {f['file']}" for p, f in g["flavours"].items())
                  for role, g in bundle["graphs"].items()]
        if bundle["provenance"]:
            lines.append(f"  provenance: {json.dumps(bundle['provenance'])}")
    print("\n".join(lines))


# ---- dispatch ----------------------------------------------------------------------------
SUBCOMMANDS = {
    "animate": ("animate a portrait with a driving video or image", _animate_arguments, _animate),
    "demo": ("animate the bundled demo portrait with the bundled driving clip", _demo_arguments, _demo),
    "info": ("show the bundle, the execution providers and the custom-op library status", _info_arguments, _info),
}
#: Subcommands provided by optional modules: name -> module with add_arguments(p) and run(args).
EXTENSIONS = {"benchmark": "megaportraits.benchmark.cli"}


def _subcommands() -> dict:
    commands = dict(SUBCOMMANDS)
    for name, module_name in EXTENSIONS.items():
        try:
            found = importlib.util.find_spec(module_name) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            module = importlib.import_module(module_name)
            summary = (module.__doc__ or name).strip().splitlines()[0]
            commands[name] = (summary, module.add_arguments, module.run)
    return commands


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="One-shot neural head avatars: animate a portrait with a driving video.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name, (summary, add_arguments, run) in _subcommands().items():
        p = sub.add_parser(name, help=summary, description=summary)
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def main(argv=None) -> int:
    from .files import signals_raise

    args = build_parser().parse_args(argv)
    with warnings.catch_warnings(), signals_raise():
        warnings.showwarning = _show_warning
        stdout, sys.stdout = sys.stdout, _CheckedStdout(sys.stdout)
        try:
            status = args.run(args)
            sys.stdout.flush()  # what is still buffered fails here, inside the handlers below
            return status
        except AnimationInterrupted as e:
            print(f"{PROG}: {e}", file=sys.stderr)
            return 128 + getattr(e, "signum", signal.SIGINT)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP (files.Stopped) before any output
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 128 + getattr(e, "signum", signal.SIGINT)
        except MegaportraitsError as e:
            if isinstance(e, StdoutError):
                _silence_stdout()
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 1
        except MemoryError:
            print(f"{PROG}: error: out of memory; use smaller inputs or a smaller model", file=sys.stderr)
            return 1
        except BrokenPipeError:
            _silence_stdout()  # the reader stopped reading on purpose (| head): no message
            return 128 + signal.SIGPIPE
        except OSError as e:
            print(f"{PROG}: error: {e.strerror or e}" + (f": {e.filename!r}" if e.filename else ""),
                  file=sys.stderr)
            return 1
        finally:
            sys.stdout = stdout


class StdoutError(MegaportraitsError):
    """Standard output cannot be written (a full disk behind ``> file``, a closed terminal)."""


class _CheckedStdout:
    """``sys.stdout`` while a command runs: a write that fails says it was standard output
    (a :class:`StdoutError`); a reader that stopped reading stays a BrokenPipeError."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        return self._checked(self._stream.write, text)

    def flush(self):
        return self._checked(self._stream.flush)

    def _checked(self, call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise StdoutError(f"cannot write to standard output: {e.strerror or e}") from None

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's own flush at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{PROG}: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
