// Command crdgen extracts the real CDI and KubeVirt CustomResourceDefinitions
// from their Go modules' sources, for the test Kubernetes peer
// (internal/testpeer/kube). It reads the source files with go/parser only:
// importing those modules would drag hundreds of dependencies into ferry's
// module graph.
//
//	go run ./hack/tools/crdgen -out DIR
//
// downloads kubevirt.io/containerized-data-importer and kubevirt.io/kubevirt
// at the pinned versions through the Go module proxy (checked against the
// checksum database) and writes one YAML file per CRD into DIR.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// Pinned like ferry's API types (containerized-data-importer-api v1.65.0,
// kubevirt.io/api v1.7.0).
const (
	cdiModule      = "kubevirt.io/containerized-data-importer@v1.65.0"
	kubevirtModule = "kubevirt.io/kubevirt@v1.7.0"

	cdiCRDFile      = "pkg/operator/resources/crds_generated.go"
	kubevirtSchemas = "pkg/virt-operator/resource/generate/components/validations_generated.go"
	kubevirtHeaders = "pkg/virt-operator/resource/generate/components/crds.go"
)

// cdiWanted are keys of the CDICRDs map.
var cdiWanted = []string{"cdiconfig", "datasource", "datavolume", "storageprofile", "dataimportcron"}

// kvCRD is what crds.go builds with the Kubernetes types; the parts that are
// literals there (names, short names, printer columns) are read from it and
// checked against this table so a drift fails loudly.
type kvCRD struct {
	fn       string // constructor in crds.go
	group    string
	kind     string
	plural   string
	versions []kvVersion
	status   bool // status subresource
}

type kvVersion struct {
	name               string
	storage            bool
	deprecationWarning string
}

// coreVersions mirrors kubevirt.io/api core/v1 ApiSupportedVersions.
var coreVersions = []kvVersion{
	{name: "v1", storage: true},
	{name: "v1alpha3", deprecationWarning: "kubevirt.io/v1alpha3 is now deprecated and will be removed in a future release."},
}

var betaVersions = []kvVersion{{name: "v1alpha1"}, {name: "v1beta1", storage: true}}

var kubevirtWanted = []kvCRD{
	{fn: "NewVirtualMachineCrd", group: "kubevirt.io", kind: "VirtualMachine", plural: "virtualmachines", versions: coreVersions, status: true},
	{fn: "NewVirtualMachineInstanceCrd", group: "kubevirt.io", kind: "VirtualMachineInstance", plural: "virtualmachineinstances", versions: coreVersions},
	{fn: "NewVirtualMachineInstanceMigrationCrd", group: "kubevirt.io", kind: "VirtualMachineInstanceMigration", plural: "virtualmachineinstancemigrations", versions: coreVersions, status: true},
	{fn: "NewVirtualMachineSnapshotCrd", group: "snapshot.kubevirt.io", kind: "VirtualMachineSnapshot", plural: "virtualmachinesnapshots", versions: betaVersions, status: true},
	{fn: "NewVirtualMachineRestoreCrd", group: "snapshot.kubevirt.io", kind: "VirtualMachineRestore", plural: "virtualmachinerestores", versions: betaVersions, status: true},
	{fn: "NewVirtualMachineExportCrd", group: "export.kubevirt.io", kind: "VirtualMachineExport", plural: "virtualmachineexports", versions: betaVersions, status: true},
}

func main() {
	out := flag.String("out", "", "directory to write the CRD YAML files into")
	cdiDir := flag.String("cdi-dir", "", "CDI module source (default: go mod download "+cdiModule+")")
	kvDir := flag.String("kubevirt-dir", "", "KubeVirt module source (default: go mod download "+kubevirtModule+")")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "crdgen: -out DIR is required")
		os.Exit(2)
	}
	if err := run(*out, *cdiDir, *kvDir); err != nil {
		fmt.Fprintln(os.Stderr, "crdgen:", err)
		os.Exit(1)
	}
}

func run(out, cdiDir, kvDir string) error {
	var err error
	if cdiDir == "" {
		if cdiDir, err = download(cdiModule); err != nil {
			return err
		}
	}
	if kvDir == "" {
		if kvDir, err = download(kubevirtModule); err != nil {
			return err
		}
	}
	files := map[string][]byte{}
	cdi, err := stringMap(filepath.Join(cdiDir, cdiCRDFile), "CDICRDs")
	if err != nil {
		return err
	}
	for _, k := range cdiWanted {
		y, ok := cdi[k]
		if !ok {
			return fmt.Errorf("%s: CDICRDs has no %q", cdiCRDFile, k)
		}
		files["cdi-"+k+".yaml"] = []byte(y)
	}
	schemas, err := stringMap(filepath.Join(kvDir, kubevirtSchemas), "CRDsValidation")
	if err != nil {
		return err
	}
	headers, err := parseHeaders(filepath.Join(kvDir, kubevirtHeaders))
	if err != nil {
		return err
	}
	for _, c := range kubevirtWanted {
		h, ok := headers[c.fn]
		if !ok {
			return fmt.Errorf("%s: no func %s", kubevirtHeaders, c.fn)
		}
		y, err := kubevirtYAML(c, h, schemas)
		if err != nil {
			return err
		}
		files["kubevirt-"+h.singular+".yaml"] = y
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for name, b := range files {
		// Temp + rename: a test never sees half a file.
		tmp := filepath.Join(out, "."+name+".tmp")
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, filepath.Join(out, name)); err != nil {
			return err
		}
	}
	return nil
}

// download fetches mod@version into the module cache and returns its
// directory. It runs outside any module so no go.mod is touched.
func download(mod string) (string, error) {
	tmp, err := os.MkdirTemp("", "crdgen")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	cmd := exec.Command("go", "mod", "download", "-json", mod)
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GO111MODULE=on")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	var info struct{ Dir, Error string }
	if jerr := json.Unmarshal(b, &info); jerr == nil && info.Error != "" {
		return "", fmt.Errorf("go mod download %s: %s", mod, info.Error)
	}
	if err != nil {
		return "", fmt.Errorf("go mod download %s: %w: %s", mod, err, stderr.String())
	}
	if info.Dir == "" {
		return "", fmt.Errorf("go mod download %s: no directory reported", mod)
	}
	return info.Dir, nil
}

// stringMap reads `var NAME = map[string]string{"k": `...`, ...}` from a
// Go file without compiling it.
func stringMap(path, name string) (map[string]string, error) {
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.VAR {
			continue
		}
		for _, s := range g.Specs {
			vs := s.(*ast.ValueSpec)
			for i, n := range vs.Names {
				if n.Name != name || i >= len(vs.Values) {
					continue
				}
				lit, ok := vs.Values[i].(*ast.CompositeLit)
				if !ok {
					return nil, fmt.Errorf("%s: %s is not a composite literal", path, name)
				}
				m := map[string]string{}
				for _, e := range lit.Elts {
					kv, ok := e.(*ast.KeyValueExpr)
					if !ok {
						continue
					}
					k, err1 := stringExpr(kv.Key, nil)
					v, err2 := stringExpr(kv.Value, nil)
					if err := errors.Join(err1, err2); err != nil {
						return nil, fmt.Errorf("%s: %s: %w", path, name, err)
					}
					m[k] = v
				}
				return m, nil
			}
		}
	}
	return nil, fmt.Errorf("%s: no var %s", path, name)
}

// stringExpr evaluates a string literal, a concatenation of them, or a
// reference to a string constant in consts.
func stringExpr(e ast.Expr, consts map[string]string) (string, error) {
	switch e := e.(type) {
	case *ast.BasicLit:
		if e.Kind != token.STRING {
			return "", fmt.Errorf("not a string literal: %s", e.Value)
		}
		return strconv.Unquote(e.Value)
	case *ast.BinaryExpr:
		if e.Op != token.ADD {
			break
		}
		a, err := stringExpr(e.X, consts)
		if err != nil {
			return "", err
		}
		b, err := stringExpr(e.Y, consts)
		return a + b, err
	case *ast.Ident:
		if v, ok := consts[e.Name]; ok {
			return v, nil
		}
	case *ast.ParenExpr:
		return stringExpr(e.X, consts)
	}
	return "", fmt.Errorf("not a constant string expression (%T)", e)
}

type header struct {
	plural, singular, kind string // kind empty when not a literal
	shortNames, categories []string
	columns                []column
	status                 bool
	err                    error
}

type column struct {
	Name        string `json:"name"`
	Type        string `json:"type"`
	JSONPath    string `json:"jsonPath"`
	Description string `json:"description,omitempty"`
	Priority    int    `json:"priority,omitempty"`
}

// parseHeaders reads, per New*Crd function of crds.go, the literal parts of
// the CRD it builds.
func parseHeaders(path string) (map[string]header, error) {
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	consts := map[string]string{}
	for _, d := range f.Decls {
		if g, ok := d.(*ast.GenDecl); ok && g.Tok == token.CONST {
			for _, s := range g.Specs {
				vs := s.(*ast.ValueSpec)
				for i, n := range vs.Names {
					if i < len(vs.Values) {
						if v, err := stringExpr(vs.Values[i], nil); err == nil {
							consts[n.Name] = v
						}
					}
				}
			}
		}
	}
	out := map[string]header{}
	for _, d := range f.Decls {
		fd, ok := d.(*ast.FuncDecl)
		if !ok || fd.Body == nil {
			continue
		}
		var h header
		var perr error
		ast.Inspect(fd.Body, func(n ast.Node) bool {
			if perr != nil {
				return false
			}
			switch n := n.(type) {
			case *ast.SelectorExpr:
				if n.Sel.Name == "CustomResourceSubresourceStatus" {
					h.status = true
				}
			case *ast.CompositeLit:
				switch typeName(n.Type) {
				case "CustomResourceDefinitionNames":
					for _, e := range n.Elts {
						kv := e.(*ast.KeyValueExpr)
						key := kv.Key.(*ast.Ident).Name
						switch key {
						case "Plural":
							h.plural, perr = stringExpr(kv.Value, consts)
						case "Singular":
							h.singular, perr = stringExpr(kv.Value, consts)
						case "Kind":
							h.kind, _ = stringExpr(kv.Value, consts) // may be a selector
						case "ShortNames", "Categories":
							var l []string
							for _, x := range kv.Value.(*ast.CompositeLit).Elts {
								s, err := stringExpr(x, consts)
								if err != nil {
									perr = err
								}
								l = append(l, s)
							}
							if key == "ShortNames" {
								h.shortNames = l
							} else {
								h.categories = l
							}
						}
					}
				case "[]CustomResourceColumnDefinition":
					for _, e := range n.Elts {
						var c column
						for _, x := range e.(*ast.CompositeLit).Elts {
							kv := x.(*ast.KeyValueExpr)
							switch kv.Key.(*ast.Ident).Name {
							case "Name":
								c.Name, perr = stringExpr(kv.Value, consts)
							case "Type":
								c.Type, perr = stringExpr(kv.Value, consts)
							case "JSONPath":
								c.JSONPath, perr = stringExpr(kv.Value, consts)
							case "Description":
								c.Description, perr = stringExpr(kv.Value, consts)
							case "Priority":
								c.Priority, perr = strconv.Atoi(kv.Value.(*ast.BasicLit).Value)
							}
							if perr != nil {
								return false
							}
						}
						h.columns = append(h.columns, c)
					}
				}
			}
			return true
		})
		// Kept, not returned: only the wanted constructors must parse.
		h.err = perr
		if h.plural != "" || perr != nil {
			out[fd.Name.Name] = h
		}
	}
	return out, nil
}

func typeName(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.SelectorExpr:
		return e.Sel.Name
	case *ast.ArrayType:
		return "[]" + typeName(e.Elt)
	case *ast.Ident:
		return e.Name
	}
	return ""
}

// kubevirtYAML assembles a CRD the way crds.go does: header, versions,
// printer columns and subresources on every version, and the generated
// OpenAPI schema (keyed by singular name) on every version.
func kubevirtYAML(c kvCRD, h header, schemas map[string]string) ([]byte, error) {
	if h.err != nil {
		return nil, fmt.Errorf("%s: %s: %w", kubevirtHeaders, c.fn, h.err)
	}
	if h.plural != c.plural || (h.kind != "" && h.kind != c.kind) || h.status != c.status {
		return nil, fmt.Errorf("%s: crds.go says plural=%q kind=%q status=%v; the table says %q %q %v: update crdgen",
			c.fn, h.plural, h.kind, h.status, c.plural, c.kind, c.status)
	}
	schema, ok := schemas[h.singular]
	if !ok {
		return nil, fmt.Errorf("%s: no schema %q in CRDsValidation", c.fn, h.singular)
	}
	if !strings.HasPrefix(schema, "openAPIV3Schema:") {
		return nil, fmt.Errorf("%s: schema %q does not start with openAPIV3Schema", c.fn, h.singular)
	}
	q := func(v any) string { b, _ := json.Marshal(v); return string(b) }
	var b strings.Builder
	fmt.Fprintf(&b, "# Extracted by hack/tools/crdgen from %s (%s, %s).\n", kubevirtModule, kubevirtHeaders, kubevirtSchemas)
	b.WriteString("apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n")
	fmt.Fprintf(&b, "  name: %s.%s\n  labels:\n    kubevirt.io: \"\"\n", c.plural, c.group)
	fmt.Fprintf(&b, "spec:\n  group: %s\n  scope: Namespaced\n  names:\n", c.group)
	fmt.Fprintf(&b, "    plural: %s\n    singular: %s\n    kind: %s\n", h.plural, h.singular, c.kind)
	if len(h.shortNames) > 0 {
		fmt.Fprintf(&b, "    shortNames: %s\n", q(h.shortNames))
	}
	if len(h.categories) > 0 {
		fmt.Fprintf(&b, "    categories: %s\n", q(h.categories))
	}
	b.WriteString("  versions:\n")
	for _, v := range c.versions {
		fmt.Fprintf(&b, "  - name: %s\n    served: true\n    storage: %v\n", v.name, v.storage)
		if v.deprecationWarning != "" {
			fmt.Fprintf(&b, "    deprecated: true\n    deprecationWarning: %s\n", q(v.deprecationWarning))
		}
		if len(h.columns) > 0 {
			fmt.Fprintf(&b, "    additionalPrinterColumns: %s\n", q(h.columns))
		}
		if c.status {
			b.WriteString("    subresources:\n      status: {}\n")
		}
		b.WriteString("    schema:\n")
		for line := range strings.SplitSeq(strings.TrimRight(schema, "\n"), "\n") {
			if line == "" {
				b.WriteString("\n")
				continue
			}
			b.WriteString("      " + line + "\n")
		}
	}
	return []byte(b.String()), nil
}
