"""`natra install` and `natra uninstall`: the installer's command line.

Owns: the options and their environment fallbacks (the DaemonSet's init
container passes everything through env from a ConfigMap), reading the
cluster defaults file, waiting for the main network plugin's config to appear,
and printing what the installer did.
Rule: only wiring; every decision about the config is `natra.node.chaining`'s,
carried out by `natra.node.install`. The clock is read here, at the edge, and
only to wait. `natra.cli` finds the subcommands through
`add_install_arguments` / `install_main` and the uninstall pair.
Must not know: conflists, bin dir layout, bpffs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from natra.node import chaining
from natra.node import install as inst

# Environment fallbacks for every option, so one container spec serves both
# commands (the DaemonSet sets NATRA_ACTION to `install` or `uninstall`).
ENV_HOST_ROOT = "NATRA_HOST_ROOT"
ENV_BUNDLE = "NATRA_BUNDLE"
ENV_DEFAULTS_FILE = "NATRA_DEFAULTS_FILE"
ENV_REPLACE_BANDWIDTH = "NATRA_REPLACE_BANDWIDTH"
ENV_CNI_BIN_DIRS = "NATRA_CNI_BIN_DIRS"  # colon-separated host paths
ENV_CONF_DIR = "NATRA_CONF_DIR"
ENV_WAIT_S = "NATRA_WAIT_FOR_CONFIG_S"
ENV_MOUNT_BPFFS = "NATRA_MOUNT_BPFFS"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})
POLL_INTERVAL_S = 1.0  # how often to look for the main plugin's config while waiting
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _flag(env: dict, name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None:
        return default
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise SystemExit(f"natra: {name}={value!r} is not a yes/no value")


MAX_WAIT_S = 86400.0


def _seconds(text: str, where: str) -> float:
    """A number of seconds (0..1 day) from an option or its environment variable."""
    try:
        value = float(text)
    except ValueError:
        raise SystemExit(f"natra install: {where}={text!r} is not a number of seconds (e.g. 600)") from None
    if not 0 <= value <= MAX_WAIT_S:  # NaN fails this too
        raise SystemExit(f"natra install: {where}={text!r} must be between 0 and {MAX_WAIT_S:g} seconds")
    return value


def _wait_arg(text: str) -> float:
    try:
        return _seconds(text, "--wait-for-config")
    except SystemExit as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("natra install: ")) from None


# Every NATRA_* variable the installer reads: `natra install --help` lists them.
VARIABLES_HELP = {
    ENV_HOST_ROOT: "--host-root",
    ENV_CONF_DIR: "--conf-dir",
    ENV_CNI_BIN_DIRS: "--cni-bin-dir (colon-separated)",
    ENV_BUNDLE: "--bundle",
    ENV_DEFAULTS_FILE: "--defaults-file",
    ENV_REPLACE_BANDWIDTH: "--replace-bandwidth (yes/no)",
    ENV_MOUNT_BPFFS: "--no-mount-bpffs when no (yes/no, default yes)",
    ENV_WAIT_S: "--wait-for-config (seconds)",
}
UNINSTALL_ENV = (ENV_HOST_ROOT, ENV_CONF_DIR, ENV_CNI_BIN_DIRS)


def env_epilog(names) -> str:
    return "environment (used when the option is not given):\n" + "\n".join(
        f"  {name:<26} {VARIABLES_HELP[name]}" for name in names)


def _common(parser: argparse.ArgumentParser, env: dict) -> None:
    parser.add_argument("--host-root", default=env.get(ENV_HOST_ROOT, "/"),
                        help="the node's root as this process sees it (a temp dir for tests) [%(default)s]")
    parser.add_argument("--conf-dir", default=env.get(ENV_CONF_DIR),
                        help=f"CNI config dir on the host [/{inst.DEFAULT_CONF_DIR}]")
    bins = [d for d in env.get(ENV_CNI_BIN_DIRS, "").split(":") if d]
    parser.set_defaults(env_cni_bin_dirs=bins or None)  # an appending option cannot default to a list
    parser.add_argument("--cni-bin-dir", action="append", dest="cni_bin_dirs", default=None,
                        help=f"CNI bin dir on the host, repeatable [/{inst.DEFAULT_CNI_BIN_DIR} and, "
                             f"when present, {', '.join('/' + d for d in inst.OPTIONAL_CNI_BIN_DIRS)}]")


def _own_bundle() -> str | None:
    """The bundle this process runs from, when it is the PyInstaller node bundle."""
    if getattr(sys, "frozen", False):
        return str(Path(sys.executable).resolve().parent)
    return None


def add_install_arguments(p: argparse.ArgumentParser, env: dict | None = None) -> None:
    env = dict(os.environ if env is None else env)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = env_epilog(VARIABLES_HELP)
    _common(p, env)
    p.add_argument("--bundle", default=env.get(ENV_BUNDLE) or _own_bundle(),
                   help="the node bundle directory (dist/natra); default: the bundle running this command")
    p.add_argument("--no-bundle", action="store_true",
                   help="copy no binary: `natra` is already in the bin dirs (node image path)")
    p.add_argument("--defaults-file", default=env.get(ENV_DEFAULTS_FILE),
                   help="JSON object of cluster defaults copied into Natra's conflist entry")
    p.add_argument("--default", action="append", default=[], metavar="KEY=JSON",
                   help="one cluster default (value parsed as JSON, else taken as a string); repeatable")
    p.add_argument("--replace-bandwidth", action="store_true",
                   default=_flag(env, ENV_REPLACE_BANDWIDTH, False),
                   help="put Natra in place of a standard `bandwidth` entry (carrying its static limits)")
    p.add_argument("--no-mount-bpffs", dest="mount_bpffs", action="store_false",
                   default=_flag(env, ENV_MOUNT_BPFFS, True), help="do not mount bpffs")
    p.add_argument("--wait-for-config", type=_wait_arg,
                   default=_seconds(env.get(ENV_WAIT_S, "0"), ENV_WAIT_S),
                   metavar="SECONDS",
                   help="wait this long for the main network plugin to write its config [%(default)s]")


def add_uninstall_arguments(p: argparse.ArgumentParser, env: dict | None = None) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = env_epilog(UNINSTALL_ENV)
    _common(p, dict(os.environ if env is None else env))


def install_parser(env: dict | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="natra install", description="Copy Natra's node bundle into the CNI "
                                "bin dirs and chain Natra into the runtime's CNI config.")
    add_install_arguments(p, env)
    return p


def uninstall_parser(env: dict | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="natra uninstall", description="Give the runtime its CNI config back "
                                "as it was before `natra install`, then remove Natra's binaries.")
    add_uninstall_arguments(p, env)
    return p


def read_defaults(path: str | None, pairs: list[str]) -> dict:
    defaults: dict = {}
    if path:
        try:
            loaded = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise chaining.InstallError(f"defaults file {path}: {e}") from e
        if not isinstance(loaded, dict):
            raise chaining.InstallError(f"defaults file {path}: must hold a JSON object")
        defaults.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise chaining.InstallError(f"--default {pair!r}: expected KEY=VALUE")
        try:
            defaults[key] = json.loads(raw)
        except ValueError:
            defaults[key] = raw
    return defaults


def wait_for_config(host_root: str, conf_dir: str | None, timeout_s: float) -> bool:
    """Poll until the config dir holds a CNI config or `timeout_s` passes."""
    host = inst.Host(host_root, conf_dir)
    deadline = time.monotonic() + timeout_s
    while chaining.active_config(host.config_names()) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_S)
    return True


def _print_report(verb: str, report: inst.Report) -> None:
    for note in report.notes:
        print(f"natra {verb}: {note}")
    state = "changed" if report.changed else "already as wanted, nothing written"
    bins = ", ".join(report.bin_dirs) or "- (no binary copied)"
    print(f"natra {verb}: config {report.config or '-'}; bin dirs {bins}; {state}"
          + ("; mounted bpffs" if report.bpffs_mounted else ""))


def _missing_host_root(verb: str, host_root: str) -> bool:
    if os.path.isdir(host_root):
        return False
    print(f"natra {verb}: host root {host_root!r} does not exist (check --host-root or ${ENV_HOST_ROOT})",
          file=sys.stderr)
    return True


def install_main(args: argparse.Namespace) -> int:
    if _missing_host_root("install", args.host_root):
        return EXIT_USAGE
    bundle = None if args.no_bundle else args.bundle
    if bundle is None and not args.no_bundle:
        print("natra install: no bundle: pass --bundle dist/natra (build it with `make node-bundle`), "
              "or --no-bundle when `natra` is already in the bin dirs", file=sys.stderr)
        return EXIT_USAGE

    def run() -> inst.Report:
        defaults = read_defaults(args.defaults_file, args.default)
        chaining.natra_entry(defaults)  # a default the plugin refuses (a typo) stops here, before any wait
        if args.wait_for_config > 0 and not wait_for_config(args.host_root, args.conf_dir,
                                                            args.wait_for_config):
            raise chaining.InstallError(f"no CNI config appeared within {args.wait_for_config:g} s")
        return inst.install(args.host_root, bundle, replace_bandwidth=args.replace_bandwidth,
                            defaults=defaults, cni_bin_dirs=args.cni_bin_dirs or args.env_cni_bin_dirs,
                            conf_dir=args.conf_dir, mount_bpffs=args.mount_bpffs)

    return _carry_out("install", run)


def uninstall_main(args: argparse.Namespace) -> int:
    if _missing_host_root("uninstall", args.host_root):
        return EXIT_USAGE
    return _carry_out("uninstall", lambda: inst.uninstall(
        args.host_root, cni_bin_dirs=args.cni_bin_dirs or args.env_cni_bin_dirs, conf_dir=args.conf_dir))


def _carry_out(verb: str, run: Callable[[], inst.Report]) -> int:
    """Run the installer's `verb`; print its report, or the one line that says why it failed."""
    try:
        report = run()
    except (chaining.InstallError, OSError) as e:
        print(f"natra {verb}: {e}", file=sys.stderr)
        return EXIT_FAILED
    _print_report(verb, report)
    return EXIT_OK


def run_install(argv: list[str], env: dict | None = None) -> int:
    return install_main(install_parser(env).parse_args(argv))


def run_uninstall(argv: list[str], env: dict | None = None) -> int:
    return uninstall_main(uninstall_parser(env).parse_args(argv))


COMMANDS = {"install": run_install, "uninstall": run_uninstall}


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: `python -m natra.node.install_cli install|uninstall ...`."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: natra {{{','.join(COMMANDS)}}} [options]", file=sys.stderr)
        return EXIT_USAGE
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
