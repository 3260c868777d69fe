//! Checks a Grafana dashboard against the metrics control exposes.
//!
//! Contract: [`check_dashboard`] takes the dashboard JSON and a scrape of
//! `/metrics` in the classic text format, and returns how many PromQL
//! expressions it checked, or every problem found, each naming the panel
//! (or template variable) and the expression. An expression is every `expr`
//! of a Prometheus target of any panel, nested ones in rows included, and
//! every Prometheus query variable of the templating list. Grafana variables
//! are replaced by parseable stand-ins first ([`substitute_variables`]), each
//! expression is parsed with `promql-parser`, and every metric name its
//! vector and matrix selectors name must appear in the scrape, as a sample or
//! as a `# TYPE` family.
//!
//! [`check_parses`] does the same without a scrape (parsing only), and
//! [`promtool_check`] has `promtool check rules` parse every expression as
//! a recording rule, when `promtool` is installed.

#![allow(dead_code)] // Each test crate including this module uses part of it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, VectorSelector};
use serde_json::Value;

/// Where an expression comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The `expr` of a panel target.
    Panel {
        /// The panel's title (empty if it has none).
        title: String,
        /// The target's `refId`.
        ref_id: String,
    },
    /// The query of a templating variable.
    Variable {
        /// The variable's name.
        name: String,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Panel { title, ref_id } => write!(f, "panel {title:?} target {ref_id}"),
            Source::Variable { name } => write!(f, "variable ${name}"),
        }
    }
}

/// One PromQL expression of a dashboard, before variable substitution.
#[derive(Debug, Clone)]
pub struct Query {
    /// The panel or variable it belongs to.
    pub source: Source,
    /// The text as written in the dashboard. For `label_values(m, l)`
    /// variables, just the selector `m`; for `query_result(q)`, just `q`.
    pub expr: String,
}

impl Query {
    fn problem(&self, what: impl std::fmt::Display) -> String {
        format!("{}: `{}`: {what}", self.source, self.expr)
    }
}

/// Every Prometheus expression of the dashboard: panel targets (walking rows
/// and any nested `panels`, and the legacy `rows`) and query variables.
///
/// Targets or variables whose data source has a type other than
/// `prometheus` are skipped; a missing type counts as Prometheus. Variable
/// queries that name no metric (`label_values(label)`, `label_names()`,
/// `metrics(…)`) are skipped.
pub fn collect_queries(dashboard: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    collect_panels(dashboard, None, &mut out);
    let variables =
        dashboard.pointer("/templating/list").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for var in variables {
        if var.get("type").and_then(Value::as_str) != Some("query") || !is_prometheus(var) {
            continue;
        }
        let name = var.get("name").and_then(Value::as_str).unwrap_or_default();
        let text = match var.get("query") {
            Some(Value::String(s)) => s.as_str(),
            Some(Value::Object(o)) => o.get("query").and_then(Value::as_str).unwrap_or_default(),
            _ => "",
        };
        if let Some(expr) = variable_expr(text) {
            out.push(Query { source: Source::Variable { name: name.to_owned() }, expr });
        }
    }
    out
}

/// Walks `node` for panels (anything with `targets`), recursing into every
/// value except the templating list, which is read separately.
fn collect_panels(node: &Value, inherited_ds: Option<&Value>, out: &mut Vec<Query>) {
    match node {
        Value::Object(obj) => {
            let ds = obj.get("datasource").or(inherited_ds);
            if let Some(targets) = obj.get("targets").and_then(Value::as_array) {
                let title = obj.get("title").and_then(Value::as_str).unwrap_or_default();
                for target in targets {
                    let Some(expr) = target.get("expr").and_then(Value::as_str) else {
                        continue;
                    };
                    let target_ds = target.get("datasource").or(ds);
                    if target_ds.is_some_and(|d| !is_prometheus_ds(d)) {
                        continue;
                    }
                    let ref_id = target.get("refId").and_then(Value::as_str).unwrap_or("?");
                    out.push(Query {
                        source: Source::Panel { title: title.to_owned(), ref_id: ref_id.to_owned() },
                        expr: expr.to_owned(),
                    });
                }
            }
            for (key, value) in obj {
                if key != "targets" && key != "templating" {
                    collect_panels(value, ds, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_panels(v, inherited_ds, out)),
        _ => {}
    }
}

fn is_prometheus(var: &Value) -> bool {
    var.get("datasource").is_none_or(is_prometheus_ds)
}

/// A data source is Prometheus unless it says another type. A bare string
/// (a name or `${datasource}`) cannot say, so it counts as Prometheus.
fn is_prometheus_ds(ds: &Value) -> bool {
    match ds.get("type").and_then(Value::as_str) {
        Some(t) => t == "prometheus",
        None => true,
    }
}

/// The PromQL part of a variable query, or `None` if it names no metric.
fn variable_expr(query: &str) -> Option<String> {
    let q = query.trim();
    if q.is_empty() {
        return None;
    }
    if let Some(args) = call_args(q, "label_values") {
        // label_values(selector, label): check the selector; the one-argument
        // form label_values(label) names no metric.
        return split_last_arg(args).map(|(selector, _label)| selector.trim().to_owned());
    }
    if let Some(inner) = call_args(q, "query_result") {
        return Some(inner.trim().to_owned());
    }
    if call_args(q, "label_names").is_some() || call_args(q, "metrics").is_some() {
        return None;
    }
    // Anything else is taken as PromQL and fails to parse if it is not.
    Some(q.to_owned())
}

/// `name( … )` → the text between the parentheses.
fn call_args<'a>(q: &'a str, name: &str) -> Option<&'a str> {
    q.strip_prefix(name)?.trim_start().strip_prefix('(')?.strip_suffix(')')
}

/// Splits at the last comma outside braces, parentheses and quotes.
fn split_last_arg(args: &str) -> Option<(&str, &str)> {
    let (mut depth, mut quote, mut escaped, mut last) = (0i32, None, false, None);
    for (i, c) in args.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '{' | '(' | '[' => depth += 1,
            '}' | ')' | ']' => depth -= 1,
            ',' if depth == 0 => last = Some(i),
            _ => {}
        }
    }
    last.map(|i| (&args[..i], &args[i + 1..]))
}

/// Replaces Grafana variables by text PromQL can parse.
///
/// Interval variables (`$__rate_interval`, `$__interval`, `$__range`, and
/// `${__…}` forms) become `5m`; their `_ms` / `_s` variants become numbers.
/// Any other variable (`$node`, `${node}`, `${node:regex}`, `[[node]]`,
/// `$datasource`) becomes its bare name, which is fine inside a label
/// matcher's string and, outside one, reads as a metric name that the
/// metrics check then reports.
pub fn substitute_variables(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(pos) = rest.find(['$', '[']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        let (name, len) = if let Some(t) = tail.strip_prefix("${") {
            match t.find('}') {
                Some(end) => (t[..end].split(':').next().unwrap_or_default(), end + 3),
                None => ("", 0),
            }
        } else if let Some(t) = tail.strip_prefix("[[") {
            match t.find("]]") {
                Some(end) => (t[..end].split(':').next().unwrap_or_default(), end + 4),
                None => ("", 0),
            }
        } else if let Some(t) = tail.strip_prefix('$') {
            let end = t.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(t.len());
            (&t[..end], end + 1)
        } else {
            ("", 0)
        };
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if valid {
            out.push_str(&variable_value(name));
            rest = &tail[len..];
        } else {
            // A `$` or `[` that starts no variable (a range `[5m]`…).
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn variable_value(name: &str) -> String {
    match name {
        "__interval_ms" | "__rate_interval_ms" | "__range_ms" => "300000".into(),
        "__range_s" => "300".into(),
        n if n.starts_with("__") => "5m".into(),
        n => n.into(),
    }
}

/// Every vector selector of the expression, those inside matrix selectors,
/// subqueries and function arguments included.
pub fn selectors(expr: &Expr) -> Vec<&VectorSelector> {
    let mut out = Vec::new();
    walk(expr, &mut out);
    out
}

fn walk<'a>(expr: &'a Expr, out: &mut Vec<&'a VectorSelector>) {
    match expr {
        Expr::Aggregate(a) => {
            walk(&a.expr, out);
            if let Some(p) = &a.param {
                walk(p, out);
            }
        }
        Expr::Unary(u) => walk(&u.expr, out),
        Expr::Binary(b) => {
            walk(&b.lhs, out);
            walk(&b.rhs, out);
        }
        Expr::Paren(p) => walk(&p.expr, out),
        Expr::Subquery(s) => walk(&s.expr, out),
        Expr::VectorSelector(vs) => out.push(vs),
        Expr::MatrixSelector(ms) => out.push(&ms.vs),
        Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, out)),
        Expr::Extension(e) => e.expr.children().iter().for_each(|c| walk(c, out)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
    }
}

/// The metric name a selector selects: its name, or an exact
/// `__name__="…"` matcher. `None` for regex-selected names.
pub fn metric_name(vs: &VectorSelector) -> Option<&str> {
    vs.name.as_deref().or_else(|| {
        vs.matchers
            .matchers
            .iter()
            .find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
            .map(|m| m.value.as_str())
    })
}

/// Every metric name the expression selects by exact name.
pub fn metric_names(expr: &Expr) -> BTreeSet<String> {
    selectors(expr).into_iter().filter_map(metric_name).map(str::to_owned).collect()
}

/// The names a `/metrics` text exposes: every sample name, every `# TYPE`
/// family, and for a `histogram` (`summary`) family its `_bucket`, `_sum`
/// and `_count` (`_sum`, `_count`) samples even when none was scraped yet.
pub fn exposed_names(metrics_text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics_text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix('#') {
            let mut words = rest.split_whitespace();
            if words.next() == Some("TYPE") {
                if let Some(family) = words.next() {
                    let suffixes: &[&str] = match words.next() {
                        Some("histogram") => &["_bucket", "_sum", "_count"],
                        Some("summary") => &["_sum", "_count"],
                        _ => &[],
                    };
                    names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
                    names.insert(family.to_owned());
                }
            }
            continue;
        }
        let end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
        if end > 0 {
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// Reads the dashboard JSON and collects its queries.
fn load(dashboard_json: &str) -> Result<Vec<Query>, Vec<String>> {
    let dashboard: Value =
        serde_json::from_str(dashboard_json).map_err(|e| vec![format!("dashboard is not valid JSON: {e}")])?;
    let queries = collect_queries(&dashboard);
    if queries.is_empty() {
        return Err(vec!["dashboard has no Prometheus expression".into()]);
    }
    Ok(queries)
}

/// Parses one query after variable substitution.
fn parse_query(query: &Query) -> Result<Expr, String> {
    if query.expr.trim().is_empty() {
        return Err(query.problem("empty expression"));
    }
    parser::parse(&substitute_variables(&query.expr)).map_err(|e| query.problem(format_args!("does not parse: {e}")))
}

/// Parses the dashboard JSON and every expression in it; returns the
/// queries with their parsed expressions, or every problem.
pub fn parse_dashboard(dashboard_json: &str) -> Result<Vec<(Query, Expr)>, Vec<String>> {
    let mut parsed = Vec::new();
    let mut problems = Vec::new();
    for query in load(dashboard_json)? {
        match parse_query(&query) {
            Ok(expr) => parsed.push((query, expr)),
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() {
        Ok(parsed)
    } else {
        Err(problems)
    }
}

/// Checks that every expression of the dashboard parses, without a scrape.
/// Returns the number of expressions.
pub fn check_parses(dashboard_json: &str) -> Result<usize, Vec<String>> {
    parse_dashboard(dashboard_json).map(|q| q.len())
}

/// Checks that every expression of the dashboard parses and that every
/// metric it selects appears in `metrics_text` (a `/metrics` scrape).
/// Returns the number of expressions checked, or every problem, each naming
/// the panel or variable, the expression and what is wrong.
pub fn check_dashboard(dashboard_json: &str, metrics_text: &str) -> Result<usize, Vec<String>> {
    let queries = load(dashboard_json)?;
    let exposed = exposed_names(metrics_text);
    let mut problems = Vec::new();
    for query in &queries {
        let expr = match parse_query(query) {
            Ok(expr) => expr,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        for name in metric_names(&expr) {
            if !exposed.contains(&name) {
                problems.push(query.problem(format_args!("metric {name} is not in the metrics text")));
            }
        }
    }
    if problems.is_empty() {
        Ok(queries.len())
    } else {
        Err(problems)
    }
}

/// `promtool`: `$PROMTOOL` if set, else the first on `PATH`.
pub fn find_promtool() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PROMTOOL") {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join("promtool")).find(|p| p.is_file())
}

/// Writes every expression of the dashboard (variables substituted) as a
/// recording rule `dashboard:qN` into a temporary rules file and runs
/// `promtool check rules` on it. `None` when promtool is not installed;
/// otherwise the number of rules, or the problems (promtool's output with
/// the list of rules).
pub fn promtool_check(dashboard_json: &str) -> Option<Result<usize, Vec<String>>> {
    let promtool = find_promtool()?;
    let queries = match load(dashboard_json) {
        Ok(queries) => queries,
        Err(problems) => return Some(Err(problems)),
    };
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut index = Vec::with_capacity(queries.len());
    for (i, query) in queries.iter().enumerate() {
        let expr = substitute_variables(&query.expr);
        // A JSON string is a valid YAML double-quoted scalar.
        let quoted = serde_json::to_string(&expr).expect("a string serializes");
        rules.push_str(&format!("      - record: dashboard:q{i}\n        expr: {quoted}\n"));
        index.push(format!("dashboard:q{i} = {}", query.problem("")));
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let path = std::env::temp_dir().join(format!("portcullis-dashboard-{}-{nanos}.rules.yml", std::process::id()));
    if let Err(e) = std::fs::write(&path, &rules) {
        return Some(Err(vec![format!("cannot write {}: {e}", path.display())]));
    }
    let output = Command::new(&promtool).arg("check").arg("rules").arg(&path).output();
    let _ = std::fs::remove_file(&path);
    Some(match output {
        Err(e) => Err(vec![format!("cannot run {}: {e}", promtool.display())]),
        Ok(out) if out.status.success() => Ok(queries.len()),
        Ok(out) => {
            let mut problems = vec![format!(
                "promtool check rules failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )];
            problems.extend(index);
            Err(problems)
        }
    })
}
