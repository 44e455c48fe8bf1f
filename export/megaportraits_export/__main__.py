"""``python -m megaportraits_export describe|train|evaluate|export``."""
import importlib
import sys

COMMANDS = {
    "describe": ("megaportraits_export.describe", "parameter counts and data-flow tensor shapes of a preset"),
    "train": ("megaportraits_export.train", "train a model from a config file"),
    "evaluate": ("megaportraits_export.evaluate", "self- and cross-reenactment metrics on synthetic ground truth"),
    "export": ("megaportraits_export.onnx_export", "export a checkpoint or a random-init preset to an ONNX bundle"),
    "convert": ("megaportraits_export.convert.cli", "convert another project's released weights into a bundle"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print("usage: python -m megaportraits_export {" + ",".join(COMMANDS) + "} [options]", file=sys.stderr)
        for name, (_, help_) in COMMANDS.items():
            print(f"  {name:<9} {help_}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
