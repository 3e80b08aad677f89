//! The configuration: limits from the top-level keys or the `bandwidth` capability, checked
//! before anything is touched.

use common::error::{Error, Result};
use common::gojson;
use common::skel::CmdArgs;
use serde_json::Value;

/// The four limit keys, as the config and the `bandwidth` capability spell them.
const KEYS: [&str; 4] = ["ingressRate", "ingressBurst", "egressRate", "egressBurst"];

/// One direction's limit: rate in bits/s and burst in bits, both non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub rate: u64,
    pub burst: u64,
}

/// The limits of an attachment. `ingress` is traffic towards the container, `egress` traffic
/// from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub ingress: Option<Limit>,
    pub egress: Option<Limit>,
}

impl Limits {
    /// No limit in either direction: the plugin passes prevResult through.
    pub fn is_none(&self) -> bool {
        self.ingress.is_none() && self.egress.is_none()
    }
}

/// What the plugin needs from its config.
#[derive(Debug, Clone)]
pub struct Conf {
    /// The network name (`name`).
    pub network: String,
    pub limits: Limits,
}

impl Conf {
    /// The config for ADD and CHECK: every limit checked (code 7 on a bad one).
    pub fn load(args: &CmdArgs) -> Result<Conf> {
        Ok(Conf {
            network: network_name(&args.conf),
            limits: limits(&args.conf)?,
        })
    }

    /// The config for DEL and GC, which need only the network name: limits that do not
    /// parse must not stop the removal of an attachment (they are logged and ignored).
    pub fn load_for_teardown(args: &CmdArgs) -> Conf {
        let limits = limits(&args.conf).unwrap_or_else(|e| {
            log::warn!("ignoring for {}: {e}", args.command.as_str());
            Limits::default()
        });
        Conf {
            network: network_name(&args.conf),
            limits,
        }
    }
}

fn network_name(conf: &Value) -> String {
    gojson::get(conf, "name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The limits of a config: the top-level keys when any of the four is present (even as
/// null), else `runtimeConfig.bandwidth`, else none.
pub fn limits(conf: &Value) -> Result<Limits> {
    let top_level = KEYS.iter().any(|k| gojson::get(conf, k).is_some());
    let (source, what) = if top_level {
        (conf, "")
    } else {
        match gojson::get(conf, "runtimeConfig").and_then(|r| gojson::get(r, "bandwidth")) {
            None | Some(Value::Null) => return Ok(Limits::default()),
            Some(bw @ Value::Object(_)) => (bw, "runtimeConfig.bandwidth."),
            Some(other) => {
                return Err(Error::config(format!(
                    "runtimeConfig.bandwidth must be an object, got {other}"
                )));
            }
        }
    };
    let get = |key: &str| -> Result<u64> {
        match gojson::get(source, key) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v.as_u64().ok_or_else(|| {
                Error::config(format!(
                    "{what}{key} must be a non-negative integer ({}), got {v}",
                    if key.ends_with("Rate") {
                        "bits per second"
                    } else {
                        "bits"
                    }
                ))
            }),
        }
    };
    Ok(Limits {
        ingress: limit(get("ingressRate")?, get("ingressBurst")?, "ingress")?,
        egress: limit(get("egressRate")?, get("egressBurst")?, "egress")?,
    })
}

/// One direction: both zero = no limit; one without the other is an error, as is a burst
/// whose byte count does not fit the kernel's u32, or a rate or burst under one byte.
fn limit(rate: u64, burst: u64, dir: &str) -> Result<Option<Limit>> {
    match (rate, burst) {
        (0, 0) => return Ok(None),
        (_, 0) => {
            return Err(Error::config(format!(
                "if {dir}Rate is set, {dir}Burst must also be set"
            )));
        }
        (0, _) => {
            return Err(Error::config(format!(
                "if {dir}Burst is set, {dir}Rate must also be set"
            )));
        }
        _ => {}
    }
    if burst / 8 >= u64::from(u32::MAX) {
        return Err(Error::config(format!(
            "{dir}Burst cannot be more than 4GB ({burst} bits)"
        )));
    }
    if rate < 8 {
        return Err(Error::config(format!(
            "{dir}Rate {rate} bit/s is below one byte per second"
        )));
    }
    if burst < 8 {
        return Err(Error::config(format!(
            "{dir}Burst {burst} bits is below one byte"
        )));
    }
    Ok(Some(Limit { rate, burst }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lim(rate: u64, burst: u64) -> Option<Limit> {
        Some(Limit { rate, burst })
    }

    #[test]
    fn top_level_beats_the_capability() {
        let rc = json!({"bandwidth": {"ingressRate": 1000, "ingressBurst": 800}});
        let l = limits(&json!({"runtimeConfig": rc})).unwrap();
        assert_eq!(l.ingress, lim(1000, 800));
        assert_eq!(l.egress, None);

        // Any one top-level key, even null, means the capability is ignored.
        let l =
            limits(&json!({"egressRate": 2000, "egressBurst": 1600, "runtimeConfig": rc})).unwrap();
        assert_eq!((l.ingress, l.egress), (None, lim(2000, 1600)));
        let l = limits(&json!({"ingressRate": null, "runtimeConfig": rc})).unwrap();
        assert!(l.is_none());

        assert!(limits(&json!({})).unwrap().is_none());
        assert!(
            limits(&json!({"runtimeConfig": {"bandwidth": null}}))
                .unwrap()
                .is_none()
        );
        let zero = json!({"ingressRate": 0, "ingressBurst": 0, "egressRate": 0, "egressBurst": 0});
        assert!(limits(&zero).unwrap().is_none());
    }

    #[test]
    fn runtimes_values_are_read_as_they_send_them() {
        // containerd: Go field names, burst at MaxUint32 bits.
        let containerd = json!({"runtimeConfig": {"bandwidth": {"IngressRate": 10_000_000u64,
            "IngressBurst": 4_294_967_295u64, "EgressRate": 20_000_000u64, "EgressBurst": 4_294_967_295u64}}});
        let l = limits(&containerd).unwrap();
        assert_eq!(l.ingress, lim(10_000_000, 4_294_967_295));
        assert_eq!(l.egress, lim(20_000_000, 4_294_967_295));
        // containerd, one direction annotated: the other is 0/0.
        let one = json!({"runtimeConfig": {"bandwidth": {"IngressRate": 1000, "IngressBurst": 4_294_967_295u64,
            "EgressRate": 0, "EgressBurst": 0}}});
        assert_eq!(limits(&one).unwrap().egress, None);
        // CRI-O: camelCase, burst at MaxUint32*8-1 bits (just under the 4 GB limit).
        let crio = json!({"runtimeConfig": {"bandwidth": {"ingressRate": 1_000_000_000_000_000u64,
            "ingressBurst": 34_359_738_359u64, "egressRate": 0, "egressBurst": 0}}});
        assert_eq!(
            limits(&crio).unwrap().ingress,
            lim(1_000_000_000_000_000, 34_359_738_359)
        );
        // Top-level keys are found the same way.
        let top = json!({"IngressRate": 8000, "IngressBurst": 800});
        assert_eq!(limits(&top).unwrap().ingress, lim(8000, 800));
    }

    #[test]
    fn bad_limits_are_config_errors() {
        for bad in [
            json!({"ingressRate": 1000}),
            json!({"ingressBurst": 1000}),
            json!({"egressRate": 1000, "egressBurst": 0}),
            json!({"egressRate": 1000, "egressBurst": 8 * u64::from(u32::MAX)}),
            json!({"ingressRate": -1, "ingressBurst": 800}),
            json!({"ingressRate": 1.5, "ingressBurst": 800}),
            json!({"ingressRate": "1000", "ingressBurst": 800}),
            json!({"ingressRate": 7, "ingressBurst": 800}),
            json!({"ingressRate": 800, "ingressBurst": 7}),
            json!({"runtimeConfig": {"bandwidth": [1, 2]}}),
            json!({"runtimeConfig": {"bandwidth": {"egressRate": 10}}}),
        ] {
            let e = limits(&bad).unwrap_err();
            assert_eq!(e.code(), 7, "{bad}: {e}");
        }
        // The largest burst that fits.
        let max = 8 * (u64::from(u32::MAX) - 1);
        assert!(limits(&json!({"ingressRate": 8, "ingressBurst": max})).is_ok());
    }
}
