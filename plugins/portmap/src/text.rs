//! An nft JSON batch rendered in nft's text syntax, so that a batch and the conditions
//! chains (written in nft syntax by the operator) go to the kernel as ONE transaction.
//!
//! Only the commands and expressions portmap's batches use are rendered; anything else is
//! `None`, and the caller falls back to two transactions. Every string written unquoted must
//! be a plain token, and every quoted one (comments) free of quotes and line breaks, so no
//! value can change the script's structure.

use serde_json::Value;

/// The text script for `batch` (as `Batch::to_json` makes it), one command per line.
pub fn render(batch: &Value) -> Option<String> {
    let mut out = String::new();
    for cmd in batch.get("nftables")?.as_array()? {
        out.push_str(&command(cmd)?);
        out.push('\n');
    }
    Some(out)
}

fn obj_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key)?.as_str().filter(|s| is_token(s))
}

/// A string nft reads as one word: names, addresses, prefixes, keywords, `@set`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '/' | '-' | '_' | '@'))
}

fn quoted(s: &str) -> Option<String> {
    (!s.chars().any(|c| c == '"' || c == '\\' || c.is_control())).then(|| format!("\"{s}\""))
}

/// `family table` of an object.
fn table_of(o: &Value) -> Option<String> {
    Some(format!(
        "{} {}",
        obj_str(o, "family")?,
        obj_str(o, "table")?
    ))
}

fn command(cmd: &Value) -> Option<String> {
    let (verb, body) = cmd.as_object()?.iter().next()?;
    let (kind, o) = body.as_object()?.iter().next()?;
    match (verb.as_str(), kind.as_str()) {
        ("add", "table") => Some(format!(
            "add table {} {}",
            obj_str(o, "family")?,
            obj_str(o, "name")?
        )),
        ("add", "chain") => {
            let mut s = format!("add chain {} {}", table_of(o)?, obj_str(o, "name")?);
            if o.get("hook").is_some() {
                let prio = o.get("prio")?.as_i64()?;
                s.push_str(&format!(
                    " {{ type {} hook {} priority {prio}; policy {}; }}",
                    obj_str(o, "type")?,
                    obj_str(o, "hook")?,
                    obj_str(o, "policy")?
                ));
            }
            Some(s)
        }
        ("flush", kind @ ("chain" | "set" | "map")) => Some(format!(
            "flush {kind} {} {}",
            table_of(o)?,
            obj_str(o, "name")?
        )),
        ("add", "rule") => {
            let stmts: Option<Vec<String>> = o.get("expr")?.as_array()?.iter().map(stmt).collect();
            Some(format!(
                "add rule {} {} {}",
                table_of(o)?,
                obj_str(o, "chain")?,
                stmts?.join(" ")
            ))
        }
        ("add", "set" | "map") => {
            let types: Vec<&str> = match o.get("type")? {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().map(Value::as_str).collect::<Option<_>>()?,
                _ => return None,
            };
            if !types.iter().all(|t| is_token(t)) {
                return None;
            }
            let mut spec = format!("type {}", types.join(" . "));
            if kind == "map" {
                spec.push_str(&format!(" : {}", obj_str(o, "map")?));
            }
            spec.push(';');
            if let Some(flags) = o.get("flags") {
                let flags: Vec<&str> = flags
                    .as_array()?
                    .iter()
                    .map(Value::as_str)
                    .collect::<Option<_>>()?;
                if !flags.iter().all(|f| is_token(f)) {
                    return None;
                }
                spec.push_str(&format!(" flags {};", flags.join(", ")));
            }
            Some(format!(
                "add {kind} {} {} {{ {spec} }}",
                table_of(o)?,
                obj_str(o, "name")?
            ))
        }
        ("add" | "delete", "element") => {
            let elems: Option<Vec<String>> =
                o.get("elem")?.as_array()?.iter().map(element).collect();
            Some(format!(
                "{verb} element {} {} {{ {} }}",
                table_of(o)?,
                obj_str(o, "name")?,
                elems?.join(", ")
            ))
        }
        _ => None,
    }
}

/// A set or map element: `key [comment "c"] [: data]`.
fn element(e: &Value) -> Option<String> {
    let (key, data) = match e {
        Value::Array(kd) if kd.len() == 2 => (&kd[0], Some(&kd[1])),
        other => (other, None),
    };
    let mut s = match key.get("elem") {
        Some(el) => {
            let mut s = expr(el.get("val")?)?;
            if let Some(c) = el.get("comment") {
                s.push_str(&format!(" comment {}", quoted(c.as_str()?)?));
            }
            s
        }
        None => expr(key)?,
    };
    if let Some(d) = data {
        s.push_str(&format!(" : {}", expr(d)?));
    }
    Some(s)
}

fn expr(e: &Value) -> Option<String> {
    match e {
        Value::String(s) => is_token(s).then(|| s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(o) => {
            let (kind, v) = o.iter().next()?;
            if o.len() != 1 {
                return None;
            }
            match kind.as_str() {
                "meta" | "ct" => Some(format!("{kind} {}", obj_str(v, "key")?)),
                "payload" => Some(format!(
                    "{} {}",
                    obj_str(v, "protocol")?,
                    obj_str(v, "field")?
                )),
                "fib" => {
                    let flags: Vec<&str> = v
                        .get("flags")?
                        .as_array()?
                        .iter()
                        .map(Value::as_str)
                        .collect::<Option<_>>()?;
                    if !flags.iter().all(|f| is_token(f)) {
                        return None;
                    }
                    Some(format!(
                        "fib {} {}",
                        flags.join(" . "),
                        obj_str(v, "result")?
                    ))
                }
                "concat" => {
                    let parts: Option<Vec<String>> = v.as_array()?.iter().map(expr).collect();
                    Some(parts?.join(" . "))
                }
                "prefix" => Some(format!(
                    "{}/{}",
                    obj_str(v, "addr")?,
                    v.get("len")?.as_u64()?
                )),
                "map" => Some(format!(
                    "{} map {}",
                    expr(v.get("key")?)?,
                    expr(v.get("data")?)?
                )),
                _ => None,
            }
        }
        _ => None,
    }
}

fn stmt(s: &Value) -> Option<String> {
    let o = s.as_object()?;
    if o.len() != 1 {
        return None;
    }
    let (kind, v) = o.iter().next()?;
    match kind.as_str() {
        "match" => {
            let (l, r) = (expr(v.get("left")?)?, expr(v.get("right")?)?);
            match v.get("op")?.as_str()? {
                "==" | "in" => Some(format!("{l} {r}")),
                "!=" => Some(format!("{l} != {r}")),
                _ => None,
            }
        }
        "jump" | "goto" => Some(format!("{kind} {}", obj_str(v, "target")?)),
        "accept" | "drop" | "return" | "masquerade" | "counter" if v.is_null() => {
            Some(kind.clone())
        }
        "dnat" => Some(format!(
            "dnat {} to {} : {}",
            obj_str(v, "family")?,
            expr(v.get("addr")?)?,
            expr(v.get("port")?)?
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_commands_and_refuses_what_it_does_not_know() {
        let b = json!({"nftables": [
            {"add": {"table": {"family": "inet", "name": "t"}}},
            {"add": {"map": {"family": "inet", "table": "t", "name": "m",
                "type": ["inet_proto", "inet_service"], "map": "ipv4_addr"}}},
            {"add": {"chain": {"family": "inet", "table": "t", "name": "pre",
                "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}},
            {"add": {"rule": {"family": "inet", "table": "t", "chain": "pre", "expr": [
                {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                    "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}}},
                {"jump": {"target": "c4"}}]}}},
            {"add": {"element": {"family": "inet", "table": "t", "name": "m", "elem": [
                [{"elem": {"val": {"concat": ["tcp", 80]}, "comment": "n/c/eth0"}}, "10.0.0.2"]]}}},
        ]});
        assert_eq!(
            render(&b).unwrap(),
            "add table inet t\n\
             add map inet t m { type inet_proto . inet_service : ipv4_addr; }\n\
             add chain inet t pre { type nat hook prerouting priority -100; policy accept; }\n\
             add rule inet t pre fib daddr type local ip saddr 127.0.0.0/8 jump c4\n\
             add element inet t m { tcp . 80 comment \"n/c/eth0\" : 10.0.0.2 }\n"
        );
        let quote = json!({"nftables": [{"add": {"element": {"family": "inet", "table": "t",
            "name": "m", "elem": [{"elem": {"val": "10.0.0.2", "comment": "a\"b"}}]}}}]});
        assert_eq!(render(&quote), None);
        let odd = json!({"nftables": [{"add": {"table": {"family": "inet", "name": "t; flush ruleset"}}}]});
        assert_eq!(render(&odd), None);
        let unknown = json!({"nftables": [{"add": {"rule": {"family": "inet", "table": "t",
            "chain": "c", "expr": [{"log": null}]}}}]});
        assert_eq!(render(&unknown), None);
    }
}
