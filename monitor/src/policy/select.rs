//! Which containers a rule's `from` or `to` names: by identity, never by
//! address, so a rule outlives containers re-created with new addresses.

use std::collections::BTreeMap;

use anyhow::ensure;
use serde::Deserialize;

use crate::docker::Container;

/// Every field given must match (an empty selector is refused).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(
    deny_unknown_fields,
    expecting = "a selector: service, container or labels"
)]
pub struct Selector {
    /// `project/service` (compose), or a bare service name in any project.
    pub service: Option<String>,
    /// The container's name.
    pub container: Option<String>,
    /// Labels the container must carry, with these values.
    pub labels: Option<BTreeMap<String, String>>,
}

impl Selector {
    pub fn check(&self) -> anyhow::Result<()> {
        ensure!(
            self.service.is_some() || self.container.is_some() || self.labels.is_some(),
            "no selector: give service, container or labels"
        );
        for (key, text) in [("service", &self.service), ("container", &self.container)] {
            ensure!(text.as_ref().is_none_or(|t| !t.is_empty()), "{key}: empty");
        }
        if let Some(service) = &self.service {
            ensure!(
                service.matches('/').count() <= 1
                    && service.split('/').all(|part| !part.is_empty()),
                "service: {service:?}: expected project/service or service"
            );
        }
        Ok(())
    }

    pub fn matches(&self, container: &Container) -> bool {
        let service = self.service.as_deref().is_none_or(|wanted| {
            let (project, service) = match wanted.split_once('/') {
                Some((project, service)) => (Some(project), service),
                None => (None, wanted),
            };
            container.compose_service.as_deref() == Some(service)
                && project.is_none_or(|p| container.compose_project.as_deref() == Some(p))
        });
        let name = self
            .container
            .as_deref()
            .is_none_or(|wanted| container.name == wanted);
        let labels = self.labels.as_ref().is_none_or(|wanted| {
            wanted
                .iter()
                .all(|(key, value)| container.labels.get(key) == Some(value))
        });
        service && name && labels
    }

    /// The identity of a container as `learn` writes it: its compose
    /// service where it has one, else its name.
    pub fn identity_of(container: &Container) -> Selector {
        match (&container.compose_project, &container.compose_service) {
            (Some(project), Some(service)) => Selector {
                service: Some(format!("{project}/{service}")),
                ..Selector::default()
            },
            _ => Selector {
                container: Some(container.name.clone()),
                ..Selector::default()
            },
        }
    }

    /// The selector in YAML flow style, as a policy file spells it.
    pub fn to_yaml(&self) -> String {
        let mut parts = Vec::new();
        if let Some(service) = &self.service {
            parts.push(format!("service: {}", quoted(service)));
        }
        if let Some(name) = &self.container {
            parts.push(format!("container: {}", quoted(name)));
        }
        if let Some(labels) = &self.labels {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{}: {}", quoted(k), quoted(v)))
                .collect();
            parts.push(format!("labels: {{{}}}", labels.join(", ")));
        }
        format!("{{{}}}", parts.join(", "))
    }
}

/// A YAML double-quoted scalar (JSON's escaping is valid YAML).
pub(super) fn quoted(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::docker::Posture;

    pub fn container(name: &str, project: Option<&str>, service: Option<&str>) -> Container {
        let mut labels = BTreeMap::new();
        if let (Some(p), Some(s)) = (project, service) {
            labels.insert("com.docker.compose.project".to_owned(), p.to_owned());
            labels.insert("com.docker.compose.service".to_owned(), s.to_owned());
        }
        Container {
            id: format!("{name}-id"),
            name: name.to_owned(),
            image: String::new(),
            compose_project: project.map(str::to_owned),
            compose_service: service.map(str::to_owned),
            network_mode: String::new(),
            pid: None,
            sandbox_key: None,
            endpoints: Vec::new(),
            posture: Posture::default(),
            labels,
            exposed_ports: Default::default(),
        }
    }

    fn selector(yaml: &str) -> Selector {
        serde_yaml::from_str(yaml).expect("selector")
    }

    #[test]
    fn services_names_and_labels_select_containers() {
        let web = container("shop-web-1", Some("shop"), Some("web"));
        let other_web = container("blog-web-1", Some("blog"), Some("web"));
        let plain = container("db", None, None);
        assert!(selector("{service: shop/web}").matches(&web));
        assert!(!selector("{service: shop/web}").matches(&other_web));
        assert!(selector("{service: web}").matches(&other_web));
        assert!(!selector("{service: web}").matches(&plain));
        assert!(selector("{container: db}").matches(&plain));
        assert!(selector("{labels: {com.docker.compose.project: shop}}").matches(&web));
        // All fields must hold.
        assert!(!selector("{service: web, container: db}").matches(&web));
    }

    #[test]
    fn learnt_identities_select_their_container() {
        for c in [
            container("shop-web-1", Some("shop"), Some("web")),
            container("db \"x\"", None, None),
        ] {
            let identity = Selector::identity_of(&c);
            let written = selector(&identity.to_yaml());
            assert_eq!(written, identity);
            assert!(written.matches(&c));
        }
    }

    #[test]
    fn bad_selectors_are_refused() {
        for (yaml, expected) in [
            ("{}", "no selector"),
            ("{service: \"\"}", "service: empty"),
            ("{service: a/b/c}", "expected project/service"),
            ("{service: /b}", "expected project/service"),
        ] {
            let err = selector(yaml).check().expect_err(yaml).to_string();
            assert!(err.contains(expected), "{yaml}: {err}");
        }
    }
}
