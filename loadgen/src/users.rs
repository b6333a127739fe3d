//! Where the load generator's users come from: a pattern, a file, or the
//! JSON line `pop3sd demo --json` prints.

use std::path::Path;

/// One account to log in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password: String,
}

impl User {
    /// The domain part, used as SNI unless one is given.
    pub fn domain(&self) -> Option<&str> {
        self.name.rsplit_once('@').map(|(_, d)| d)
    }
}

/// Users from a pattern: `{n}` in both strings is replaced by 1..=count.
pub fn from_pattern(user: &str, password: &str, count: usize) -> Vec<User> {
    (1..=count.max(1))
        .map(|n| User {
            name: user.replace("{n}", &n.to_string()),
            password: password.replace("{n}", &n.to_string()),
        })
        .collect()
}

/// Users from a file of `user password` lines (`#` comments allowed).
pub fn from_file(path: &Path) -> Result<Vec<User>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut users = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(char::is_whitespace) {
            Some((u, p)) => users.push(User {
                name: u.to_string(),
                password: p.trim().to_string(),
            }),
            None => {
                return Err(format!(
                    "{}:{}: expected \"user password\"",
                    path.display(),
                    i + 1
                ))
            }
        }
    }
    if users.is_empty() {
        return Err(format!("{}: no users", path.display()));
    }
    Ok(users)
}

/// What the demo's JSON line gives the load generator.
#[derive(Debug, Clone)]
pub struct DemoTarget {
    pub pop3s: String,
    pub ca_file: String,
    pub users: Vec<User>,
}

/// Reads the JSON line of `pop3sd demo --json` (saved to a file).
pub fn from_demo_json(path: &Path) -> Result<DemoTarget, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap_or(""))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let get = |k: &str| {
        v[k].as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{}: no \"{k}\"", path.display()))
    };
    let mut users = Vec::new();
    for t in v["tenants"].as_array().into_iter().flatten() {
        for u in t["users"].as_array().into_iter().flatten() {
            if let (Some(n), Some(p)) = (u["user"].as_str(), u["password"].as_str()) {
                users.push(User {
                    name: n.to_string(),
                    password: p.to_string(),
                });
            }
        }
    }
    if users.is_empty() {
        return Err(format!("{}: no users in \"tenants\"", path.display()));
    }
    Ok(DemoTarget {
        pop3s: get("pop3s")?,
        ca_file: get("ca_file")?,
        users,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        let u = from_pattern("user{n}@example.com", "pw{n}", 3);
        assert_eq!(u[2].name, "user3@example.com");
        assert_eq!(u[2].password, "pw3");
        assert_eq!(u[0].domain(), Some("example.com"));
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("users");
        std::fs::write(&f, "# list\na@x.org secret one\n").unwrap();
        assert_eq!(from_file(&f).unwrap()[0].password, "secret one");
        std::fs::write(&f, "lonely\n").unwrap();
        assert!(from_file(&f).is_err());
        let j = d.path().join("demo.json");
        std::fs::write(
            &j,
            r#"{"pop3s":"127.0.0.1:1","ca_file":"/ca.pem","tenants":[{"domain":"x.org","users":[{"user":"a@x.org","password":"p"}]}]}"#,
        )
        .unwrap();
        let t = from_demo_json(&j).unwrap();
        assert_eq!(t.users.len(), 1);
        assert_eq!(t.pop3s, "127.0.0.1:1");
    }
}
