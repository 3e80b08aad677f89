//! The config each plugin receives on stdin (libcni's `buildOneConfig` and
//! `injectRuntimeConfig`).

use common::spec::{Attachment, Version};
use serde_json::{Map, Value, json};

/// The plugin's object with `name` and `cniVersion` injected (replacing any the plugin entry
/// had), `prevResult` when given, and `runtimeConfig` set to the capability args whose key
/// the plugin declares with `"capabilities": {key: true}`; left as written when that
/// intersection is empty. Everything else (`args`, `capabilities`, ...) passes through.
pub fn plugin_config(
    plugin: &Map<String, Value>,
    network: &str,
    version: Version,
    prev_result: Option<&Value>,
    capability_args: Option<&Map<String, Value>>,
) -> Value {
    let mut conf = plugin.clone();
    conf.insert("name".into(), json!(network));
    conf.insert("cniVersion".into(), json!(version.as_str()));
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    if let Some(args) = capability_args {
        let runtime = runtime_config(plugin, args);
        if !runtime.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime));
        }
    }
    Value::Object(conf)
}

/// The declared capabilities ∩ the given capability args.
pub fn runtime_config(
    plugin: &Map<String, Value>,
    capability_args: &Map<String, Value>,
) -> Map<String, Value> {
    let Some(Value::Object(caps)) = plugin.get("capabilities") else {
        return Map::new();
    };
    caps.iter()
        .filter(|(_, enabled)| enabled.as_bool() == Some(true))
        .filter_map(|(k, _)| capability_args.get(k).map(|v| (k.clone(), v.clone())))
        .collect()
}

/// A GC request: `name`, `cniVersion` and the valid attachments under both keys libcni has
/// used (`cni.dev/valid-attachments`, and `cni.dev/attachments` from the 1.1.0 spec text).
pub fn gc_config(
    plugin: &Map<String, Value>,
    network: &str,
    version: Version,
    valid: &[Attachment],
) -> Value {
    let mut conf = plugin_config(plugin, network, version, None, None);
    if let Value::Object(m) = &mut conf {
        let list = json!(valid);
        m.insert("cni.dev/valid-attachments".into(), list.clone());
        m.insert("cni.dev/attachments".into(), list);
    }
    conf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn injects_name_version_and_prev_result() {
        let p = obj(
            json!({"type":"bridge","name":"ignored","cniVersion":"0.1.0","bridge":"b0","args":{"cni":{"x":1}}}),
        );
        let c = plugin_config(&p, "net", Version::V1_0_0, None, None);
        assert_eq!(
            c,
            json!({"type":"bridge","name":"net","cniVersion":"1.0.0","bridge":"b0","args":{"cni":{"x":1}}})
        );
        let prev = json!({"cniVersion":"1.0.0","ips":[]});
        let c = plugin_config(&p, "net", Version::V1_0_0, Some(&prev), None);
        assert_eq!(c["prevResult"], prev);
    }

    #[test]
    fn runtime_config_is_the_capability_intersection() {
        let args = obj(json!({
            "portMappings":[{"hostPort":80,"containerPort":8080,"protocol":"tcp"}],
            "bandwidth":{"ingressRate":1},
            "mac":"00:11:22:33:44:55"
        }));
        let p = obj(
            json!({"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false,"ips":true}}),
        );
        let c = plugin_config(&p, "n", Version::V1_1_0, None, Some(&args));
        assert_eq!(
            c["runtimeConfig"],
            json!({"portMappings":[{"hostPort":80,"containerPort":8080,"protocol":"tcp"}]})
        );
        // capabilities passes through, as libcni leaves it.
        assert_eq!(c["capabilities"]["portMappings"], true);

        // No intersection: no runtimeConfig at all.
        let p = obj(json!({"type":"bridge","capabilities":{"ips":true}}));
        let c = plugin_config(&p, "n", Version::V1_1_0, None, Some(&args));
        assert!(c.get("runtimeConfig").is_none());
        let p = obj(json!({"type":"bridge"}));
        assert!(
            plugin_config(&p, "n", Version::V1_1_0, None, Some(&args))
                .get("runtimeConfig")
                .is_none()
        );
    }

    #[test]
    fn gc_sends_both_keys() {
        let p = obj(json!({"type":"host-local"}));
        let valid = vec![Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }];
        let c = gc_config(&p, "n", Version::V1_1_0, &valid);
        let expect = json!([{"containerID":"c1","ifname":"eth0"}]);
        assert_eq!(c["cni.dev/valid-attachments"], expect);
        assert_eq!(c["cni.dev/attachments"], expect);
        assert!(c.get("prevResult").is_none() && c.get("runtimeConfig").is_none());
        let c = gc_config(&p, "n", Version::V1_1_0, &[]);
        assert_eq!(c["cni.dev/valid-attachments"], json!([]));
    }
}
