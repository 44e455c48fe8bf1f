"""``python -m megaportraits_export COMMAND [options]``: the dispatcher of every export-side command.

Each command is a module with ``main(argv) -> int`` following :mod:`megaportraits_export.command`
(one error line, the SDK's exit codes); it is imported only when run, so ``--help`` and a
mistyped command answer without loading torch.
"""
import importlib
import sys

from megaportraits_export.command import PROG

COMMANDS = {
    "describe": ("megaportraits_export.describe", "parameter counts and data-flow tensor shapes of a preset"),
    "preprocess": ("megaportraits_export.preprocess", "crop talking-head clips to the face for training"),
    "train": ("megaportraits_export.train", "train a model from a config file"),
    "evaluate": ("megaportraits_export.evaluate", "self- and cross-reenactment metrics on synthetic ground truth"),
    "expression-eval": ("megaportraits_export.expression_eval",
                        "the expression path alone: strong expressions, driver's code vs the source's own"),
    "export": ("megaportraits_export.onnx_export.cli", "export a checkpoint or a random-init preset to an ONNX bundle"),
    "evaluate-enhancer": ("megaportraits_export.evaluation.enhancement",
                          "the enhancer against bicubic on held-out synthetic identities at 2x"),
    "add-enhancer": ("megaportraits_export.onnx_export.enhancer",
                     "add a high-resolution enhancer (trained checkpoint or random init) to a bundle"),
    "add-precision": ("megaportraits_export.onnx_export.add_precision",
                      "give a bundle's student or enhancer graph int8/fp16 flavours"),
    "convert": ("megaportraits_export.convert.cli", "convert another project's released weights into a bundle"),
    "distill": ("megaportraits_export.distill.cli", "distil a real-time student of some avatars from a teacher bundle"),
    "distill-fidelity": ("megaportraits_export.distill.fidelity",
                         "a student against its teacher on held-out drivers, and against ground truth"),
}


def usage() -> str:
    lines = [f"usage: python -m {PROG} {{{','.join(COMMANDS)}}} [options]", "", "commands:"]
    lines += [f"  {name:<15} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", f"'python -m {PROG} COMMAND --help' shows a command's options."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if not argv:
        print(f"{PROG}: error: give a command: {', '.join(COMMANDS)} (see python -m {PROG} --help)",
              file=sys.stderr)
        return 2
    if argv[0] not in COMMANDS:
        print(f"{PROG}: error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)} "
              f"(see python -m {PROG} --help)", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
