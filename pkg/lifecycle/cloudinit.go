package lifecycle

import (
	"strings"

	"sigs.k8s.io/yaml"
)

func isCloudConfig(ud string) bool {
	return strings.HasPrefix(strings.TrimLeft(ud, " \t\r\n"), "#cloud-config")
}

// userData merges SSH keys into cloud-init user data: a #cloud-config
// gets them appended to ssh_authorized_keys (kept keys first, duplicates
// dropped); no user data becomes a minimal #cloud-config. Other user data
// (scripts, MIME) is returned as is: Validate refuses keys with it.
func userData(ud string, keys []string) string {
	if len(keys) == 0 {
		return ud
	}
	if ud == "" {
		var b strings.Builder
		b.WriteString("#cloud-config\nssh_authorized_keys:\n")
		for _, k := range keys {
			b.WriteString("  - " + yamlScalar(k) + "\n")
		}
		return b.String()
	}
	if !isCloudConfig(ud) {
		return ud
	}
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(ud), &doc); err != nil || doc == nil {
		// Not a mapping we can edit: append a key list, which cloud-init
		// reads as long as the document does not define one already.
		doc = nil
	}
	if doc == nil {
		var b strings.Builder
		b.WriteString(strings.TrimRight(ud, "\n") + "\nssh_authorized_keys:\n")
		for _, k := range keys {
			b.WriteString("  - " + yamlScalar(k) + "\n")
		}
		return b.String()
	}
	var list []any
	seen := map[string]bool{}
	if old, ok := doc["ssh_authorized_keys"].([]any); ok {
		for _, k := range old {
			if s, ok := k.(string); ok {
				seen[strings.TrimSpace(s)] = true
			}
			list = append(list, k)
		}
	}
	for _, k := range keys {
		if !seen[k] {
			list = append(list, k)
			seen[k] = true
		}
	}
	doc["ssh_authorized_keys"] = list
	out, err := yaml.Marshal(doc)
	if err != nil {
		return ud
	}
	return "#cloud-config\n" + string(out)
}

// yamlScalar quotes s as a YAML flow scalar.
func yamlScalar(s string) string {
	b, err := yaml.Marshal(s)
	if err != nil {
		return "'" + strings.ReplaceAll(s, "'", "''") + "'"
	}
	return strings.TrimRight(string(b), "\n")
}
