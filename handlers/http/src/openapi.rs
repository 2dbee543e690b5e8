//! `GET /openapi.json`: an OpenAPI 3.1 document of the routes and, for each operation the
//! caller may call, its own `POST /api/call/…` (and `GET /api/subscribe/…` for streaming
//! ones) with the operation's JSON Schemas inline.
//!
//! The registry's schemas are JSON Schema 2020-12 documents with local `$defs`; in an
//! OpenAPI document `#/$defs/X` would point at the document's root, so each schema's
//! definitions move to `components/schemas` under a name of their operation and its
//! references are rewritten to match.

use alknet_call::{OpInfo, Operations};
use alknet_core::AuthContext;
use alknet_core::service::NodeFacts;
use serde_json::{Map, Value, json};

/// Moves `schema`'s `$defs` into `components` as `{prefix}{Name}` and rewrites its
/// references; drops `$schema`.
fn hoist(mut schema: Value, prefix: &str, components: &mut Map<String, Value>) -> Value {
    let defs = schema
        .as_object_mut()
        .and_then(|m| {
            m.remove("$schema");
            m.remove("$defs")
        })
        .and_then(|d| match d {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default();
    let rewrite = |v: &mut Value| rewrite_refs(v, prefix);
    for (name, mut def) in defs {
        rewrite(&mut def);
        components.insert(format!("{prefix}{name}"), def);
    }
    rewrite(&mut schema);
    schema
}

fn rewrite_refs(v: &mut Value, prefix: &str) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref")
                && let Some(name) = r.strip_prefix("#/$defs/")
            {
                *r = format!("#/components/schemas/{prefix}{name}");
            }
            m.values_mut().for_each(|x| rewrite_refs(x, prefix));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_refs(x, prefix)),
        _ => {}
    }
}

/// A component-name prefix for an operation: `node/info` → `NodeInfo_`.
fn prefix_of(id: &str) -> String {
    let mut out = String::new();
    for part in id.split(['/', '-', '_', '.']).filter(|p| !p.is_empty()) {
        let mut c = part.chars();
        if let Some(f) = c.next() {
            out.extend(f.to_uppercase());
            out.push_str(c.as_str());
        }
    }
    out.push('_');
    out
}

fn error_responses(codes: &[&str]) -> Map<String, Value> {
    let mut m = Map::new();
    for code in codes {
        m.insert(
            (*code).to_owned(),
            json!({"description": describe(code), "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    m
}

fn describe(code: &str) -> &'static str {
    match code {
        "400" => "Malformed request",
        "401" => "No valid credential",
        "403" => "The caller lacks a scope",
        "404" => "No such operation",
        "405" => "Wrong method",
        "413" => "Body too large",
        "415" => "Body is not JSON",
        "422" => "Invalid input",
        "429" => "Too many requests in flight",
        "500" => "The operation failed",
        "503" => "Unavailable, retry",
        "504" => "The operation timed out",
        _ => "Error",
    }
}

const CALL_ERRORS: &[&str] = &[
    "400", "401", "403", "404", "405", "413", "415", "422", "429", "500", "503", "504",
];
const GET_ERRORS: &[&str] = &["400", "401", "403", "404", "405", "429"];
const SUBSCRIBE_ERRORS: &[&str] = &[
    "400", "401", "403", "404", "405", "422", "429", "500", "503", "504",
];

fn operation_paths(
    op: &OpInfo,
    paths: &mut Map<String, Value>,
    components: &mut Map<String, Value>,
) {
    let tail = op.id.trim_start_matches('/');
    let prefix = prefix_of(tail);
    let input = hoist(op.input_schema.clone(), &format!("{prefix}In_"), components);
    let output = hoist(
        op.output_schema.clone(),
        &format!("{prefix}Out_"),
        components,
    );
    let body_schema = if op.streaming {
        json!({"type": "array", "items": output})
    } else {
        output.clone()
    };
    let mut responses = error_responses(CALL_ERRORS);
    responses.insert(
        "200".into(),
        json!({"description": "The result", "content": {"application/json": {"schema": body_schema}}}),
    );
    // An input that may be absent makes the body optional: one that may be `null`, or an
    // object without required fields (absent, the gateway passes `{}`).
    let optional = match op.input_schema.get("type") {
        Some(Value::Array(t)) => t.iter().any(|t| t == "null"),
        Some(Value::String(t)) if t == "null" => true,
        Some(Value::String(t)) if t == "object" => op
            .input_schema
            .get("required")
            .and_then(Value::as_array)
            .is_none_or(|r| r.is_empty()),
        _ => false,
    };
    let mut post = json!({
        "operationId": format!("call_{}", tail.replace(['/', '-', '.'], "_")),
        "summary": op.description,
        "requestBody": {"required": !optional, "content": {"application/json": {"schema": input.clone()}}},
        "responses": responses,
    });
    if let (Some(scope), Some(m)) = (&op.scope, post.as_object_mut()) {
        m.insert("x-alknet-scope".into(), json!(scope));
    }
    paths.insert(format!("/api/call/{tail}"), json!({"post": post}));
    let mut schema_responses = error_responses(GET_ERRORS);
    schema_responses.insert(
        "200".into(),
        json!({"description": "The operation's schemas", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OperationSchema"}}}}),
    );
    paths.insert(
        format!("/api/operations/{tail}"),
        json!({"get": {
            "operationId": format!("schema_{}", tail.replace(['/', '-', '.'], "_")),
            "summary": format!("Schemas of {}", op.id),
            "responses": schema_responses,
        }}),
    );
    if op.streaming {
        let mut responses = error_responses(SUBSCRIBE_ERRORS);
        responses.insert(
            "200".into(),
            json!({"description": "Server-Sent Events: `result` per result, then `end` or `error`", "content": {"text/event-stream": {"schema": {
                "type": "object",
                "properties": {
                    "event": {"type": "string", "enum": ["result", "end", "error"]},
                    "data": {"type": "string"},
                },
            }}}}),
        );
        paths.insert(
            format!("/api/subscribe/{tail}"),
            json!({"get": {
                "operationId": format!("subscribe_{}", tail.replace(['/', '-', '.'], "_")),
                "summary": op.description,
                "parameters": [{"name": "input", "in": "query", "required": !optional, "description": "The input, as JSON", "content": {"application/json": {"schema": input.clone()}}}],
                "responses": responses,
            }}),
        );
    }
}

/// The document for `auth`'s caller.
pub(crate) fn document(ops: &Operations, auth: &AuthContext, node: &NodeFacts) -> Value {
    let mut paths = Map::new();
    let mut components = Map::new();
    components.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message", "retryable"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "retryable": {"type": "boolean"},
                    "details": {},
                },
            }},
        }),
    );
    components.insert(
        "OperationSchema".into(),
        json!({
            "type": "object",
            "required": ["operationId", "description", "streaming", "input", "output"],
            "properties": {
                "operationId": {"type": "string"},
                "description": {"type": "string"},
                "streaming": {"type": "boolean"},
                "input": {},
                "output": {},
            },
        }),
    );
    let mut health = Map::new();
    health.insert("200".into(), json!({"description": "The gateway runs", "content": {"application/json": {"schema": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}}}}));
    paths.insert(
        "/healthz".into(),
        json!({"get": {"operationId": "healthz", "summary": "Liveness, no credentials", "security": [], "responses": health}}),
    );
    let mut list = error_responses(&["401", "403", "429"]);
    list.insert("200".into(), json!({"description": "The operations the caller may call", "content": {"application/json": {"schema": {
        "type": "object", "required": ["operations"],
        "properties": {"operations": {"type": "array", "items": {
            "type": "object", "required": ["id", "description", "streaming"],
            "properties": {"id": {"type": "string"}, "description": {"type": "string"}, "streaming": {"type": "boolean"}},
        }}},
    }}}}));
    paths.insert(
        "/api/operations".into(),
        json!({"get": {"operationId": "list_operations", "summary": "The operations the caller may call", "responses": list}}),
    );
    let mut batch = error_responses(&["400", "401", "403", "405", "413", "415", "422", "429"]);
    batch.insert("200".into(), json!({"description": "One entry per call, in order: `ok` or `error`", "content": {"application/json": {"schema": {
        "type": "object", "required": ["results"],
        "properties": {"results": {"type": "array", "items": {"type": "object"}}},
    }}}}));
    paths.insert(
        "/api/batch".into(),
        json!({"post": {
            "operationId": "batch",
            "summary": format!("Several calls at once (at most {})", crate::api::MAX_BATCH),
            "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object", "required": ["calls"],
                "properties": {"calls": {"type": "array", "maxItems": crate::api::MAX_BATCH, "items": {
                    "type": "object", "required": ["id"],
                    "properties": {"id": {"type": "string"}, "input": {}},
                }}},
            }}}},
            "responses": batch,
        }}),
    );
    for op in ops
        .iter()
        .filter(|op| op.scope.as_deref().is_none_or(|s| auth.has_scope(s)))
    {
        operation_paths(op, &mut paths, &mut components);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Alknet gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!("Operations of node {}", node.fingerprint()),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer", "description": "An Alknet API token (alk_…)"}},
        },
        "security": [{"token": []}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_move_to_components_with_their_references() {
        let mut comps = Map::new();
        let s = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"a": {"$ref": "#/$defs/Thing"}},
            "$defs": {"Thing": {"type": "object", "properties": {"b": {"$ref": "#/$defs/Other"}}}, "Other": {"type": "string"}},
        });
        let out = hoist(s, "P_", &mut comps);
        assert_eq!(
            out["properties"]["a"]["$ref"],
            "#/components/schemas/P_Thing"
        );
        assert!(out.get("$schema").is_none() && out.get("$defs").is_none());
        assert_eq!(
            comps["P_Thing"]["properties"]["b"]["$ref"],
            "#/components/schemas/P_Other"
        );
        assert_eq!(prefix_of("node/list-peers"), "NodeListPeers_");
    }
}
