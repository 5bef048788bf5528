-- Certificates a node agent (ztunnel) asked for on behalf of a pod on its node
-- (ImpersonatedIdentity): the agent's own SPIFFE id, and for any Kubernetes caller whose
-- credential says so, its pod (namespace/name) and node. NULL for everything else.
ALTER TABLE issued_certificates ADD COLUMN impersonated_by TEXT;
ALTER TABLE issued_certificates ADD COLUMN requester_pod TEXT;
ALTER TABLE issued_certificates ADD COLUMN requester_node TEXT;
-- Partial: a row a workload asked for itself adds nothing to them.
CREATE INDEX issued_certificates_impersonated_by ON issued_certificates (impersonated_by, id)
    WHERE impersonated_by IS NOT NULL;
CREATE INDEX issued_certificates_requester_node ON issued_certificates (requester_node, id)
    WHERE requester_node IS NOT NULL;
