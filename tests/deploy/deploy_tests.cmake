# Deployment artefact checks (label `deploy`): Kubernetes manifests, Prometheus config and rules,
# the Grafana dashboard, the ghz configs and the Python load generator. Included from
# tests/CMakeLists.txt. Each test fails with a message naming scripts/install-deps.sh when its tool
# (the .venv Python, promtool, yamllint, shellcheck, prometheus) is missing.
#
#   ctest --test-dir build -L deploy --output-on-failure

set(_deploy_src ${PROJECT_SOURCE_DIR})
set(_deploy_dir ${PROJECT_SOURCE_DIR}/tests/deploy)
set(_require ${_deploy_dir}/require.sh)

# topserve_deploy_test(NAME TOOL COMMAND...)
function(topserve_deploy_test name tool)
  add_test(NAME ${name} COMMAND bash ${_require} ${tool} ${ARGN} WORKING_DIRECTORY ${_deploy_src})
  set_tests_properties(${name} PROPERTIES LABELS deploy TIMEOUT 120)
endfunction()

topserve_deploy_test(deploy_yamllint yamllint
  yamllint --strict -c deploy/.yamllint deploy loadtest)
topserve_deploy_test(deploy_shellcheck shellcheck
  shellcheck -x loadtest/run.sh tests/deploy/require.sh scripts/install-deps.sh scripts/python-env.sh
  scripts/test-container.sh)

topserve_deploy_test(deploy_k8s_validate ${TOPSERVE_PYTHON}
  ${TOPSERVE_PYTHON} tests/deploy/validate_k8s.py deploy/k8s)
topserve_deploy_test(deploy_k8s_validate_negative ${TOPSERVE_PYTHON}
  ${TOPSERVE_PYTHON} tests/deploy/validate_k8s.py --self-test)

topserve_deploy_test(deploy_promtool_check_config promtool
  promtool check config deploy/prometheus/prometheus.yml)
topserve_deploy_test(deploy_promtool_check_rules promtool
  promtool check rules deploy/prometheus/rules.yml)
topserve_deploy_test(deploy_promtool_test_rules promtool
  promtool test rules deploy/prometheus/rules_test.yml)
topserve_deploy_test(deploy_rules_in_sync ${TOPSERVE_PYTHON}
  ${TOPSERVE_PYTHON} tests/deploy/gen_prometheusrule.py --check)

topserve_deploy_test(deploy_dashboard ${TOPSERVE_PYTHON}
  ${TOPSERVE_PYTHON} tests/deploy/check_dashboard.py)
topserve_deploy_test(deploy_dashboard_negative ${TOPSERVE_PYTHON}
  ${TOPSERVE_PYTHON} tests/deploy/check_dashboard.py --self-test)

topserve_deploy_test(deploy_loadtest_configs ${TOPSERVE_PYTHON}
  ${TOPSERVE_PYTHON} tests/deploy/check_loadtest.py)
topserve_deploy_test(deploy_loadtest_configs_negative ${TOPSERVE_PYTHON}
  ${TOPSERVE_PYTHON} tests/deploy/check_loadtest.py --self-test)
topserve_deploy_test(deploy_loadpy_selftest ${TOPSERVE_PYTHON}
  ${TOPSERVE_PYTHON} loadtest/load.py --self-test)

# The real server + a real Prometheus + load.py on loopback (about 25 s).
if(TARGET topserve-server)
  topserve_deploy_test(deploy_e2e_prometheus prometheus
    ${TOPSERVE_PYTHON} tests/deploy/e2e_prometheus.py --server $<TARGET_FILE:topserve-server>
    --shared ${TOPSERVE_SHARED_DIR})
  set_tests_properties(deploy_e2e_prometheus PROPERTIES LABELS "deploy;e2e" TIMEOUT 300)
endif()

# Three replicas behind nginx (deploy/nginx/topserve-grpc.conf) as the gRPC balancer, with the
# client retry config of deploy/k8s/grpc-client-config.yaml; one replica drained mid-load
# (about 5 s).
if(TARGET topserve-server)
  topserve_deploy_test(deploy_replicas_nginx /usr/sbin/nginx
    ${TOPSERVE_PYTHON} tests/deploy/replicas_nginx.py --server $<TARGET_FILE:topserve-server>)
  set_tests_properties(deploy_replicas_nginx PROPERTIES LABELS "deploy;e2e;replicas" TIMEOUT 180)
endif()

# deploy/config.example.yaml shows the defaults: the server started from it and from flags alone
# has the same effective config (the default budget included).
if(TARGET topserve-server)
  topserve_deploy_test(deploy_example_config_defaults ${TOPSERVE_PYTHON}
    ${TOPSERVE_PYTHON} tests/deploy/check_example_config.py --server $<TARGET_FILE:topserve-server>)
endif()
