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

/// One of `of` equal shares of a user list (`index` counts from 1), so
/// that load generators on several client machines can drive one server
/// without two of them logging in to the same maildrop at once (the second
/// would rightly be refused `[IN-USE]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub index: usize,
    pub of: usize,
}

impl std::str::FromStr for Share {
    type Err = String;

    /// `K/N`, with 1 <= K <= N.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected K/N with 1 <= K <= N, e.g. 2/4");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = k.trim().parse().map_err(|_| bad())?;
        let of: usize = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || of == 0 || index > of {
            return Err(bad());
        }
        Ok(Share { index, of })
    }
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.of)
    }
}

/// The users of `share`: every `of`-th one, starting at the `index`-th, so
/// that each share spreads over the list's tenants as the whole list does.
/// Shares with the same `of` are disjoint and together are the whole list.
pub fn share(users: Vec<User>, share: Share) -> Result<Vec<User>, String> {
    let total = users.len();
    let mine: Vec<User> = users
        .into_iter()
        .skip(share.index - 1)
        .step_by(share.of)
        .collect();
    if mine.is_empty() {
        return Err(format!(
            "--user-share {share}: {total} user(s) leave none for this share"
        ));
    }
    Ok(mine)
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
    fn shares_are_disjoint_and_cover_the_list() {
        let all = from_pattern("u{n}@example.com", "p{n}", 10);
        let shares: Vec<Vec<User>> = (1..=3)
            .map(|k| share(all.clone(), Share { index: k, of: 3 }).unwrap())
            .collect();
        assert_eq!(shares.iter().map(Vec::len).collect::<Vec<_>>(), [4, 3, 3]);
        let mut names: Vec<String> = shares.concat().into_iter().map(|u| u.name).collect();
        names.sort();
        let mut want: Vec<String> = all.into_iter().map(|u| u.name).collect();
        want.sort();
        assert_eq!(names, want);
        assert_eq!(shares[1][0].name, "u2@example.com");
        assert_eq!(shares[1][1].name, "u5@example.com");
    }

    #[test]
    fn a_share_is_k_of_n_and_not_empty() {
        assert_eq!("2/4".parse::<Share>(), Ok(Share { index: 2, of: 4 }));
        for bad in ["0/4", "5/4", "1/0", "4", "a/b", "1/2/3", ""] {
            assert!(bad.parse::<Share>().is_err(), "{bad}");
        }
        let two = from_pattern("u{n}@example.com", "p", 2);
        let err = share(two, Share { index: 3, of: 3 }).unwrap_err();
        assert!(err.contains("none for this share"), "{err}");
    }

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
