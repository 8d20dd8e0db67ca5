#!/usr/bin/python3
"""The monitoring kit in monitoring/ against a real broker and a real Prometheus (Debian's
prometheus and promtool):
  - promtool checks the scrape config and the alert rules, and runs the rules' unit tests;
  - every Grafana dashboard is well formed: the datasource and instance variables, unique panel
    ids, every series selected with instance=~"$instance", only series the broker exports;
  - DESIGN §7: every panel of every dashboard returns data from a Prometheus that scrapes a
    broker under load (mesh-bench online and offline, REST requests, a refused link), with
    Grafana's variables substituted ($__rate_interval = 4 x the scrape interval); and the alert
    rules, loaded into that Prometheus, evaluate without errors.
Usage: monitoring_test.py MESH_BROKER MESH_BENCH MESH_CLI MONITORING_DIR"""
import glob, json, math, os, re, shutil, socket, subprocess, sys, threading, time, unittest
import urllib.error, urllib.parse, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mesh_test_support as support  # noqa: E402
from mesh_test_support import DEADLINE, Broker, wait_for  # noqa: E402

BROKER, BENCH, CLI, MONITORING = sys.argv[1:5]
WORK = support.setup(BROKER, CLI, "mesh-monitoring-test-")

SCRAPE_S = 1
BACKLOG = 10  # messages left in an offline peer's mailbox
# What Grafana puts in place of its variables. $__rate_interval is 4 x the scrape interval;
# $__interval is at least the scrape interval; $__range is about the data the test has.
VARIABLES = {
    "instance": ".*",
    "__rate_interval": "%ds" % (4 * SCRAPE_S),
    "__interval": "%ds" % SCRAPE_S,
    "__interval_ms": str(1000 * SCRAPE_S),
    "__range": "60s",
    "__range_s": "60",
    "__range_ms": "60000",
}
DASHBOARDS = sorted(glob.glob(os.path.join(MONITORING, "*.json")))
# A series selector: a metric name, then optionally its {matchers}.
SELECTOR = re.compile(r"\b(mesh_[a-z0-9_]+|up)\b(\{[^}]*\})?(?!\s*\()")


def promtool(*args, cwd=None):
    run = subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd,
                         timeout=60)
    return run.returncode, run.stdout + run.stderr


def panels(dashboard):
    """Every panel, rows' nested panels included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def targets(dashboard):
    """(panel title, expr) of every Prometheus query of the dashboard."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield panel.get("title", "?"), target["expr"]


def substitute(expr):
    def value(match):
        name = match.group(1) or match.group(2)
        if name not in VARIABLES:
            raise AssertionError("unknown Grafana variable $%s in %s" % (name, expr))
        return VARIABLES[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def without_kubernetes_discovery(text):
    """The config with each kubernetes_sd_configs block replaced by an empty static one: Debian
    builds Prometheus without Kubernetes discovery, so its promtool rejects the field. The rest
    of the job (relabelling included) is still checked."""
    out, key_indent = [], None
    for line in text.splitlines(keepends=True):
        indent = len(line) - len(line.lstrip())
        if key_indent is not None:
            if (not line.strip() or indent > key_indent
                    or (indent == key_indent and line.lstrip().startswith("- "))):
                continue
            key_indent = None
        if line.lstrip().startswith("kubernetes_sd_configs:"):
            key_indent = indent
            out.append(" " * indent + "static_configs: []\n")
            continue
        out.append(line)
    return "".join(out)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url, headers=None):
    """(status, body) of a GET; HTTP errors are answers too."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=DEADLINE) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class ConfigTest(unittest.TestCase):
    """promtool over prometheus.yml, alerts.yml and alerts_test.yml."""

    def test_scrape_config_passes_promtool(self):
        scratch = os.path.join(WORK, "check-config")
        os.makedirs(scratch)
        with open(os.path.join(MONITORING, "prometheus.yml")) as source:
            text = source.read()
        self.assertIn("kubernetes_sd_configs:", text)
        self.assertRegex(text, r"job_name: mesh-broker\n")
        self.assertRegex(text, r"job_name: mesh-broker-local\n")
        # rule_files is relative to the config: alerts.yml goes beside it.
        shutil.copy(os.path.join(MONITORING, "alerts.yml"), scratch)
        probe = os.path.join(scratch, "probe.yml")
        with open(probe, "w") as out:
            out.write("scrape_configs:\n  - job_name: probe\n    kubernetes_sd_configs:\n"
                      "      - role: pod\n")
        if promtool("check", "config", "--syntax-only", probe)[0] != 0:
            print("\nnote: this promtool has no Kubernetes discovery (Debian's build); "
                  "checking the scrape config with kubernetes_sd_configs left out",
                  file=sys.stderr)
            text = without_kubernetes_discovery(text)
        with open(os.path.join(scratch, "prometheus.yml"), "w") as out:
            out.write(text)
        code, output = promtool("check", "config", "prometheus.yml", cwd=scratch)
        self.assertEqual(code, 0, output)
        self.assertIn("1 rule files found", output)

    def test_alert_rules_pass_promtool(self):
        code, output = promtool("check", "rules", os.path.join(MONITORING, "alerts.yml"))
        self.assertEqual(code, 0, output)

    def test_alert_rules_unit_tests_pass(self):
        code, output = promtool("test", "rules", "alerts_test.yml", cwd=MONITORING)
        self.assertEqual(code, 0, output)

    def test_every_alert_has_a_unit_test(self):
        with open(os.path.join(MONITORING, "alerts.yml")) as rules:
            alerts = set(re.findall(r"^\s*- alert: (\w+)", rules.read(), re.M))
        with open(os.path.join(MONITORING, "alerts_test.yml")) as tests:
            text = tests.read()
        self.assertGreaterEqual(len(alerts), 6)
        for alert in alerts:
            tested = re.findall(r"alertname: %s\n\s*exp_alerts:(.*)" % alert, text)
            self.assertIn("", [t.strip() for t in tested], alert + " has no firing test")
            self.assertIn("[]", [t.strip() for t in tested], alert + " has no quiet test")


class DashboardTest(unittest.TestCase):
    """Each dashboard is importable JSON with the variables every panel relies on."""

    def test_there_are_dashboards(self):
        names = [os.path.basename(path) for path in DASHBOARDS]
        self.assertIn("grafana-dashboard.json", names)
        self.assertIn("grafana-store-dashboard.json", names)

    def test_variables_ids_and_instance_selectors(self):
        uids = set()
        for path in DASHBOARDS:
            name = os.path.basename(path)
            with open(path) as source:
                dashboard = json.load(source)
            self.assertNotIn(dashboard["uid"], uids, name)
            uids.add(dashboard["uid"])
            variables = {v["name"]: v for v in dashboard["templating"]["list"]}
            self.assertEqual(variables["datasource"]["type"], "datasource", name)
            self.assertEqual(variables["datasource"]["query"], "prometheus", name)
            instance = variables["instance"]
            query = instance["query"]
            query = query.get("query", "") if isinstance(query, dict) else query
            self.assertEqual(query, "label_values(mesh_build_info, instance)", name)
            self.assertTrue(instance["multi"] and instance["includeAll"], name)
            ids = [panel["id"] for panel in panels(dashboard)]
            self.assertEqual(len(ids), len(set(ids)), name + ": panel ids repeat")
            for panel in panels(dashboard):
                if panel["type"] == "row":
                    continue
                where = "%s: %s" % (name, panel.get("title"))
                self.assertTrue(panel.get("title"), where)
                self.assertTrue(panel.get("targets"), where + " has no query")
                self.assertEqual(panel["datasource"]["uid"], "${datasource}", where)
            for title, expr in targets(dashboard):
                where = "%s: %s: %s" % (name, title, expr)
                self.assertIn("$instance", expr, where)
                selectors = SELECTOR.findall(expr)
                self.assertTrue(selectors, where)
                for metric, matchers in selectors:
                    self.assertIn('instance=~"$instance"', matchers, where + ": " + metric)


class LiveTest(unittest.TestCase):
    """A broker under load, a Prometheus scraping it every second, every panel queried."""

    @classmethod
    def setUpClass(cls):
        cls.stop_load = threading.Event()
        cls.load_errors, cls.load, cls.prometheus = [], [], None
        # The broker is one of a mesh of two, so the mesh's panels see forwarded traffic.
        secret = os.path.join(WORK, "cluster.secret")
        with open(secret, "w") as out:
            out.write(os.urandom(32).hex() + "\n")
        os.chmod(secret, 0o600)
        mesh = ["--send-rate", "0", "--listen-cluster", "127.0.0.1:0",
                "--cluster-secret-file", secret]
        cls.broker = Broker("broker", *mesh)
        cls.member = Broker("member", *mesh, "--cluster-peers",
                            "127.0.0.1:%d" % cls.broker.ports["cluster"])
        try:
            cls.http = "http://127.0.0.1:%d" % cls.broker.ports["http"]
            cls.prometheus = cls.start_prometheus()
            cls.leave_a_backlog()
            wait_for(cls.target_up, "Prometheus to scrape the broker")
            cls.load = [threading.Thread(target=work, daemon=True)
                        for work in (cls.online_load, cls.offline_load, cls.control_load,
                                     cls.cross_load)]
            for thread in cls.load:
                thread.start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.stop_load.set()
        for thread in cls.load:
            thread.join(timeout=DEADLINE)
        if cls.prometheus is not None:
            if cls.prometheus.poll() is None:
                cls.prometheus.terminate()
            cls.prometheus.wait(timeout=DEADLINE)
            cls.prometheus_log.close()
        cls.broker.stop()
        cls.member.stop()

    @classmethod
    def leave_a_backlog(cls):
        """Messages for a peer that never connects: the queue, queued bytes and the store are
        not empty whenever Prometheus scrapes (the offline rounds drain in a few ms)."""
        request = urllib.request.Request(
            cls.http + "/api/v1/messages", method="POST",
            headers={"Authorization": "Bearer " + cls.broker.token,
                     "Content-Type": "application/json"},
            data=json.dumps({"to": support.offline_id(), "payload": "aGk="}).encode())
        for _ in range(BACKLOG):
            with urllib.request.urlopen(request, timeout=DEADLINE) as answer:
                status = json.loads(answer.read())["status"]
            if status != "ACCEPTED":
                raise AssertionError("POST /api/v1/messages: " + status)

    @classmethod
    def start_prometheus(cls):
        home = os.path.join(WORK, "prometheus")
        os.makedirs(home)
        shutil.copy(os.path.join(MONITORING, "alerts.yml"), home)
        config = os.path.join(home, "prometheus.yml")
        with open(config, "w") as out:
            out.write("global:\n"
                      "  scrape_interval: %(s)ds\n  scrape_timeout: %(s)ds\n"
                      "  evaluation_interval: %(s)ds\n"
                      "rule_files: [alerts.yml]\n"
                      "scrape_configs:\n"
                      "  - job_name: mesh-broker-local\n"
                      "    static_configs:\n"
                      "      - targets: ['127.0.0.1:%(port)d', '127.0.0.1:%(member)d']\n"
                      % {"s": SCRAPE_S, "port": cls.broker.ports["http"],
                         "member": cls.member.ports["http"]})
        cls.prometheus_url = "http://127.0.0.1:%d" % free_port()
        cls.prometheus_log_path = os.path.join(home, "prometheus.log")
        cls.prometheus_log = open(cls.prometheus_log_path, "w")
        return subprocess.Popen(
            ["prometheus", "--config.file=" + config,
             "--storage.tsdb.path=" + os.path.join(home, "data"),
             "--web.listen-address=" + cls.prometheus_url[len("http://"):]],
            stdout=subprocess.DEVNULL, stderr=cls.prometheus_log)

    @classmethod
    def prometheus_api(cls, path, **params):
        """The data of a Prometheus API answer; raises with the error if there is one."""
        if cls.prometheus.poll() is not None:
            with open(cls.prometheus_log_path) as log:
                raise AssertionError("prometheus exited: " + log.read()[-3000:])
        url = cls.prometheus_url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            status, body = http_get(url)
            answer = json.loads(body)
        except (OSError, ValueError):
            return None  # not listening, or not ready to answer, yet
        if answer.get("status") != "success":
            raise AssertionError("%s: %s: %s" % (path, answer.get("errorType"),
                                                 answer.get("error")))
        return answer["data"]

    @classmethod
    def target_up(cls):
        data = cls.prometheus_api("/api/v1/targets")
        return data and any(target["health"] == "up" for target in data["activeTargets"])

    # The load: each loop runs until the queries are done, and records what went wrong.
    @classmethod
    def bench(cls, *args):
        run = subprocess.run([BENCH, "-b", cls.broker.peer_address, "--json", *args],
                             capture_output=True, text=True, timeout=60)
        if run.returncode != 0 or json.loads(run.stdout)["delivered"] == 0:
            cls.load_errors.append("mesh-bench %s: %s%s" % (args, run.stdout, run.stderr))

    @classmethod
    def online_load(cls):
        # Peers connected, messages through the fast path, delivery latency.
        while not cls.stop_load.is_set():
            cls.bench("--pairs", "4", "--duration", "2", "--rate", "2000")

    @classmethod
    def cross_load(cls):
        # Pairs whose sender and recipient are on different brokers: forwarding both ways.
        brokers = "%s,%s" % (cls.broker.peer_address, cls.member.peer_address)
        while not cls.stop_load.is_set():
            cls.bench("--brokers", brokers, "--placement", "cross", "--pairs", "2",
                      "--duration", "2", "--rate", "1000")

    @classmethod
    def offline_load(cls):
        # Mailboxes filled then drained: store writes and syncs, queue size, stored messages;
        # and a new set of handshakes every round.
        while not cls.stop_load.wait(0.3):
            cls.bench("--mode", "offline", "--pairs", "2", "--count", "300")

    @classmethod
    def control_load(cls):
        # REST with and without the token, health, and a link refused (bad_preamble).
        token = {"Authorization": "Bearer " + cls.broker.token}
        while not cls.stop_load.wait(0.2):
            try:
                for path, headers, expect in (("/api/v1/stats", token, 200),
                                              ("/api/v1/stats", None, 401),
                                              ("/healthz", None, 200)):
                    status, body = http_get(cls.http + path, headers)
                    if status != expect:
                        cls.load_errors.append("GET %s: %d %s" % (path, status, body))
                with socket.create_connection(("127.0.0.1", cls.broker.ports["peer"]),
                                              timeout=DEADLINE) as sock:
                    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
                    sock.recv(4096)
            except OSError as error:
                cls.load_errors.append("control load: %r" % error)

    def query(self, expr):
        """The series an instant query returns, once one has a value that is a number (rates
        need two scrapes with load behind them; a quantile needs observations), or what it
        returned last when the deadline passes. A query Prometheus refuses raises."""
        end = time.time() + DEADLINE
        while True:
            result = self.prometheus_api("/api/v1/query", query=expr, time="%.3f" % time.time())
            series = result["result"] if result else []
            if any(not math.isnan(float(one["value"][1])) for one in series):
                return series, True
            if time.time() > end:
                return series, False
            time.sleep(0.1)

    def test_load_ran_cleanly(self):
        # Let every load loop finish at least one round, then check none failed.
        wait_for(lambda: self.prometheus_api(
            "/api/v1/query",
            query="mesh_store_syncs_total > 0 and mesh_peers_total > 20")["result"],
            "load to reach Prometheus")
        # The backlog sits at its recipient's home, either member of the mesh.
        wait_for(lambda: self.prometheus_api(
            "/api/v1/query", query="sum(mesh_messages_queue_size) >= %d" % BACKLOG)["result"],
            "the backlog to reach Prometheus")
        self.assertEqual(self.load_errors, [])
        self.assertTrue(self.broker.alive())

    def test_dashboards_use_only_series_the_broker_exports(self):
        status, exposition = http_get(self.http + "/metrics")
        self.assertEqual(status, 200)
        exported = {line.split("{")[0].split(" ")[0] for line in exposition.splitlines()
                    if line and not line.startswith("#")} | {"up"}
        for path in DASHBOARDS:
            with open(path) as source:
                dashboard = json.load(source)
            for title, expr in targets(dashboard):
                for metric, _ in SELECTOR.findall(expr):
                    self.assertTrue(metric in exported, "%s: %s: %s: no %s in /metrics" % (
                        os.path.basename(path), title, expr, metric))

    def test_every_panel_returns_data(self):
        failures, queries = [], 0
        for path in DASHBOARDS:
            with open(path) as source:
                dashboard = json.load(source)
            for title, expr in targets(dashboard):
                query = substitute(expr)
                queries += 1
                try:
                    result, numbers = self.query(query)
                except AssertionError as error:  # the query itself failed
                    failures.append("%s / %s: %s\n    %s" % (
                        os.path.basename(path), title, error, query))
                    continue
                if not numbers:
                    failures.append("%s / %s: %s\n    %s" % (
                        os.path.basename(path), title,
                        "only NaN" if result else "no series", query))
        self.assertGreater(queries, 0)
        self.assertEqual(failures, [], "panels without data:\n  " + "\n  ".join(failures))

    def test_alert_rules_evaluate_without_errors(self):
        def evaluated():
            groups = self.prometheus_api("/api/v1/rules")["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            return rules if rules and all(rule["health"] != "unknown" for rule in rules) else None
        rules = wait_for(evaluated, "Prometheus to evaluate the alert rules")
        self.assertGreaterEqual(len(rules), 6)
        for rule in rules:
            self.assertEqual(rule["health"], "ok", "%s: %s" % (rule["name"],
                                                                rule.get("lastError")))


if __name__ == "__main__":
    support.run_tests()
