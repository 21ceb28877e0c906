//! The Kubernetes objects the agent knows, and which Services changed.
//!
//! Sources (files, API watches) feed it [`SourceEvent`]s; the reconciler
//! takes the dirty Services and rebuilds only their models.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::model::{ObjKey, slices::LABEL_SERVICE_NAME};

/// Which source an object came from: each `--from-file` is one origin, the
/// API server another. A relist replaces only its own origin's objects.
pub type Origin = u16;

/// What a source reports.
#[derive(Clone, Debug)]
pub enum SourceEvent {
    /// Everything one origin has (a file reload). Replaces its earlier objects.
    Replace {
        origin: Origin,
        services: Vec<Service>,
        slices: Vec<EndpointSlice>,
    },
    /// A relist of one kind from one origin.
    ReplaceServices {
        origin: Origin,
        services: Vec<Service>,
    },
    ReplaceSlices {
        origin: Origin,
        slices: Vec<EndpointSlice>,
    },
    ServiceApplied {
        origin: Origin,
        service: Box<Service>,
    },
    ServiceDeleted {
        key: ObjKey,
    },
    SliceApplied {
        origin: Origin,
        slice: Box<EndpointSlice>,
    },
    SliceDeleted {
        key: ObjKey,
    },
    /// This node's zone label changed (or the Node appeared or went away).
    NodeZone(Option<String>),
    /// A part of a source has delivered its complete initial state.
    Synced(&'static str),
}

fn obj_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjKey {
    ObjKey::new(
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

pub fn service_key(svc: &Service) -> ObjKey {
    obj_key(&svc.metadata)
}

pub fn slice_key(slice: &EndpointSlice) -> ObjKey {
    obj_key(&slice.metadata)
}

/// The Service a slice belongs to (by its `kubernetes.io/service-name` label).
pub fn slice_service(slice: &EndpointSlice) -> Option<ObjKey> {
    let name = slice.metadata.labels.as_ref()?.get(LABEL_SERVICE_NAME)?;
    Some(ObjKey::new(slice.metadata.namespace.clone().unwrap_or_else(|| "default".into()), name.clone()))
}

#[derive(Debug, Default)]
pub struct Store {
    services: BTreeMap<ObjKey, (Origin, Service)>,
    slices: BTreeMap<ObjKey, (Origin, EndpointSlice)>,
    slices_by_service: BTreeMap<ObjKey, BTreeSet<ObjKey>>,
    dirty: BTreeSet<ObjKey>,
    all_dirty: bool,
    zone: Option<String>,
}

impl Store {
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    pub fn service(&self, key: &ObjKey) -> Option<&Service> {
        self.services.get(key).map(|(_, s)| s)
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The slices of a Service.
    pub fn slices_of(&self, key: &ObjKey) -> impl Iterator<Item = &EndpointSlice> {
        self.slices_by_service
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k).map(|(_, s)| s))
    }

    /// Every slice, for reporting those that belong to no service.
    pub fn all_slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.slices.values().map(|(_, s)| s)
    }

    pub fn apply(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Replace { origin, services, slices } => {
                self.replace_services(origin, services);
                self.replace_slices(origin, slices);
            }
            SourceEvent::ReplaceServices { origin, services } => self.replace_services(origin, services),
            SourceEvent::ReplaceSlices { origin, slices } => self.replace_slices(origin, slices),
            SourceEvent::ServiceApplied { origin, service } => self.put_service(origin, *service),
            SourceEvent::ServiceDeleted { key } => self.delete_service(&key),
            SourceEvent::SliceApplied { origin, slice } => self.put_slice(origin, *slice),
            SourceEvent::SliceDeleted { key } => self.delete_slice(&key),
            SourceEvent::NodeZone(zone) => {
                if zone != self.zone {
                    self.zone = zone;
                    self.all_dirty = true;
                }
            }
            SourceEvent::Synced(_) => {}
        }
    }

    fn put_service(&mut self, origin: Origin, svc: Service) {
        let key = service_key(&svc);
        if self.services.get(&key).is_some_and(|(_, old)| *old == svc) {
            return;
        }
        self.dirty.insert(key.clone());
        self.services.insert(key, (origin, svc));
    }

    fn delete_service(&mut self, key: &ObjKey) {
        if self.services.remove(key).is_some() {
            self.dirty.insert(key.clone());
        }
    }

    fn put_slice(&mut self, origin: Origin, slice: EndpointSlice) {
        let key = slice_key(&slice);
        if self.slices.get(&key).is_some_and(|(_, old)| *old == slice) {
            return;
        }
        self.delete_slice(&key);
        if let Some(svc) = slice_service(&slice) {
            self.slices_by_service.entry(svc.clone()).or_default().insert(key.clone());
            self.dirty.insert(svc);
        }
        self.slices.insert(key, (origin, slice));
    }

    fn delete_slice(&mut self, key: &ObjKey) {
        let Some((_, old)) = self.slices.remove(key) else {
            return;
        };
        if let Some(svc) = slice_service(&old) {
            if let Some(set) = self.slices_by_service.get_mut(&svc) {
                set.remove(key);
                if set.is_empty() {
                    self.slices_by_service.remove(&svc);
                }
            }
            self.dirty.insert(svc);
        }
    }

    fn replace_services(&mut self, origin: Origin, services: Vec<Service>) {
        let incoming: BTreeSet<ObjKey> = services.iter().map(service_key).collect();
        let gone: Vec<ObjKey> = self
            .services
            .iter()
            .filter(|(k, (o, _))| *o == origin && !incoming.contains(k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.delete_service(&k);
        }
        for s in services {
            self.put_service(origin, s);
        }
    }

    fn replace_slices(&mut self, origin: Origin, slices: Vec<EndpointSlice>) {
        let incoming: BTreeSet<ObjKey> = slices.iter().map(slice_key).collect();
        let gone: Vec<ObjKey> = self
            .slices
            .iter()
            .filter(|(k, (o, _))| *o == origin && !incoming.contains(k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.delete_slice(&k);
        }
        for s in slices {
            self.put_slice(origin, s);
        }
    }

    /// The Services to rebuild since the last call; `None` means all.
    pub fn take_dirty(&mut self) -> Option<BTreeSet<ObjKey>> {
        let dirty = std::mem::take(&mut self.dirty);
        if std::mem::take(&mut self.all_dirty) { None } else { Some(dirty) }
    }

    /// Every Service key known, plus those with slices but no Service.
    pub fn all_service_keys(&self) -> BTreeSet<ObjKey> {
        self.services.keys().chain(self.slices_by_service.keys()).cloned().collect()
    }
}
