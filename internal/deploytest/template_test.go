package deploytest

import (
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/app"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/config"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/processor"
)

// The tests in this file hold template.yaml (the AWS SAM template) to the
// code: the build targets, the settings each function needs, the routes, the
// schedule the API toggles, the queue the processor reads, and the rule that
// secrets are passed by reference only. They read the template with
// yaml.v3 into yaml.Node, which keeps CloudFormation's short tags (!Ref,
// !Sub, !If...) on the nodes, and need no network and no AWS account.

// samMaxBootstrapBytes bounds each function's binary. Lambda allows 250 MB
// unzipped; a Go bootstrap far above this size means local-only code (the
// embedded MongoDB) leaked in, and it slows every cold start.
const samMaxBootstrapBytes = 15_000_000

// samFunctionIDs maps the Lambda keys of config.Needs to the template's
// logical ids.
var samFunctionIDs = map[string]string{
	"lambda:api":       "ApiFunction",
	"lambda:publisher": "PublisherFunction",
	"lambda:processor": "ProcessorFunction",
}

// samSecretVariables are the settings whose values are secrets: the template
// may only pass them as Secrets Manager dynamic references.
var samSecretVariables = []string{"MONGODB_URI", "RABBITMQ_URI", "REDIS_PASSWORD", "WEBHOOK_SECRET", "API_KEY"}

// samTemplate is template.yaml, parsed.
type samTemplate struct {
	root *yaml.Node // the top-level mapping
	dir  string     // the repository root
}

func samLoad(t *testing.T) *samTemplate {
	t.Helper()
	root := testenv.RepoRoot(t)
	data, err := os.ReadFile(filepath.Join(root, "template.yaml"))
	if err != nil {
		t.Fatalf("read the SAM template: %v", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("template.yaml is not valid YAML: %v", err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		t.Fatal("template.yaml must hold one YAML document whose top level is a mapping")
	}
	return &samTemplate{root: doc.Content[0], dir: root}
}

// samDeref follows YAML aliases.
func samDeref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// samGet follows keys through nested mappings; nil when one is missing.
func samGet(n *yaml.Node, keys ...string) *yaml.Node {
	n = samDeref(n)
	for _, k := range keys {
		if n == nil || n.Kind != yaml.MappingNode {
			return nil
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == k {
				next = samDeref(n.Content[i+1])
				break
			}
		}
		n = next
	}
	return n
}

type samEntry struct {
	key string
	val *yaml.Node
}

// samEntries lists a mapping's entries in file order; none for anything else.
func samEntries(n *yaml.Node) []samEntry {
	n = samDeref(n)
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	out := make([]samEntry, 0, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		out = append(out, samEntry{n.Content[i].Value, samDeref(n.Content[i+1])})
	}
	return out
}

// samItems lists a sequence's items; none for anything else.
func samItems(n *yaml.Node) []*yaml.Node {
	n = samDeref(n)
	if n == nil || n.Kind != yaml.SequenceNode {
		return nil
	}
	out := make([]*yaml.Node, len(n.Content))
	for i, c := range n.Content {
		out[i] = samDeref(c)
	}
	return out
}

// samIntrinsic recognises a CloudFormation intrinsic function in either
// form, the short tag (!Sub 'x') or the long mapping ({"Fn::Sub": "x"}),
// and returns its full name ("Ref", "Condition" or "Fn::X") and argument.
func samIntrinsic(n *yaml.Node) (fn string, arg *yaml.Node, ok bool) {
	n = samDeref(n)
	if n == nil {
		return "", nil, false
	}
	if strings.HasPrefix(n.Tag, "!") && !strings.HasPrefix(n.Tag, "!!") && len(n.Tag) > 1 {
		name := n.Tag[1:]
		if name != "Ref" && name != "Condition" {
			name = "Fn::" + name
		}
		untagged := *n
		untagged.Tag = ""
		return name, &untagged, true
	}
	if n.Kind == yaml.MappingNode && len(n.Content) == 2 {
		k := n.Content[0].Value
		if k == "Ref" || k == "Condition" || strings.HasPrefix(k, "Fn::") {
			return k, samDeref(n.Content[1]), true
		}
	}
	return "", nil, false
}

// samString returns a plain (untagged, non-intrinsic) scalar's value.
func samString(n *yaml.Node) (string, bool) {
	n = samDeref(n)
	if n == nil || n.Kind != yaml.ScalarNode {
		return "", false
	}
	if _, _, ok := samIntrinsic(n); ok {
		return "", false
	}
	return n.Value, true
}

// samCanon renders a node in one canonical form, so that !Sub 'x' and
// {"Fn::Sub": "x"} (or !GetAtt A.B and [A, B]) compare equal.
func samCanon(n *yaml.Node) string {
	n = samDeref(n)
	if n == nil {
		return "<missing>"
	}
	if fn, arg, ok := samIntrinsic(n); ok {
		if fn == "Fn::GetAtt" && arg.Kind == yaml.ScalarNode {
			resource, attr, _ := strings.Cut(arg.Value, ".")
			return fmt.Sprintf("Fn::GetAtt([%q, %q])", resource, attr)
		}
		return fn + "(" + samCanon(arg) + ")"
	}
	switch n.Kind {
	case yaml.ScalarNode:
		return strconv.Quote(n.Value)
	case yaml.SequenceNode:
		parts := make([]string, 0, len(n.Content))
		for _, c := range n.Content {
			parts = append(parts, samCanon(c))
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case yaml.MappingNode:
		var parts []string
		for _, e := range samEntries(n) {
			parts = append(parts, strconv.Quote(e.key)+": "+samCanon(e.val))
		}
		sort.Strings(parts)
		return "{" + strings.Join(parts, ", ") + "}"
	}
	return "<unknown>"
}

// samIsNoValue reports whether n is !Ref AWS::NoValue.
func samIsNoValue(n *yaml.Node) bool {
	fn, arg, ok := samIntrinsic(n)
	return ok && fn == "Ref" && arg.Value == "AWS::NoValue"
}

// samIsSet reports whether n certainly gives a variable a non-empty value:
// not missing, not empty, and not removed by AWS::NoValue under a condition.
func samIsSet(n *yaml.Node) bool {
	n = samDeref(n)
	if n == nil || samIsNoValue(n) {
		return false
	}
	if s, ok := samString(n); ok {
		return s != ""
	}
	if fn, arg, ok := samIntrinsic(n); ok && fn == "Fn::If" {
		branches := samItems(arg)
		return len(branches) == 3 && samIsSet(branches[1]) && samIsSet(branches[2])
	}
	return true
}

// samDynamicRef matches a whole Secrets Manager dynamic reference, whose
// secret id may come from !Sub variables (${SomeSecretArn}).
var samDynamicRef = regexp.MustCompile(`^\{\{resolve:secretsmanager:(\$\{[A-Za-z0-9:.]+\}|[^{}\s])+\}\}$`)

// samIsSecretReference reports whether n is a Secrets Manager dynamic
// reference: a literal {{resolve:secretsmanager:...}}, one built by !Sub,
// or an !If whose branches are such references or AWS::NoValue.
func samIsSecretReference(n *yaml.Node) bool {
	n = samDeref(n)
	if s, ok := samString(n); ok {
		return samDynamicRef.MatchString(s)
	}
	fn, arg, ok := samIntrinsic(n)
	if !ok {
		return false
	}
	switch fn {
	case "Fn::Sub":
		if s, ok := samString(arg); ok {
			return samDynamicRef.MatchString(s)
		}
		if items := samItems(arg); len(items) == 2 {
			s, ok := samString(items[0])
			return ok && samDynamicRef.MatchString(s)
		}
	case "Fn::If":
		branches := samItems(arg)
		if len(branches) != 3 || (samIsNoValue(branches[1]) && samIsNoValue(branches[2])) {
			return false
		}
		for _, b := range branches[1:] {
			if !samIsNoValue(b) && !samIsSecretReference(b) {
				return false
			}
		}
		return true
	}
	return false
}

// samLooksSecret flags literal values that carry a credential: a URL with a
// password in it, or a Standard Webhooks secret.
var samLooksSecret = regexp.MustCompile(`(?i)^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]+@|^whsec_`)

func (s *samTemplate) resource(id string) *yaml.Node { return samGet(s.root, "Resources", id) }

func (s *samTemplate) resourceType(id string) string {
	typ, _ := samString(samGet(s.resource(id), "Type"))
	return typ
}

// resourcesOfType lists the logical ids of resources of type typ, sorted.
func (s *samTemplate) resourcesOfType(typ string) []string {
	var ids []string
	for _, e := range samEntries(samGet(s.root, "Resources")) {
		if t, _ := samString(samGet(e.val, "Type")); t == typ {
			ids = append(ids, e.key)
		}
	}
	sort.Strings(ids)
	return ids
}

func (s *samTemplate) functions() []string { return s.resourcesOfType("AWS::Serverless::Function") }

func (s *samTemplate) globals() *yaml.Node { return samGet(s.root, "Globals", "Function") }

// property returns a function's property, or the Globals one it inherits.
func (s *samTemplate) property(fn, key string) *yaml.Node {
	if p := samGet(s.resource(fn), "Properties", key); p != nil {
		return p
	}
	return samGet(s.globals(), key)
}

// env returns a function's environment variables as SAM merges them: the
// Globals ones, overridden by the function's own.
func (s *samTemplate) env(fn string) map[string]*yaml.Node {
	vars := map[string]*yaml.Node{}
	for _, e := range samEntries(samGet(s.globals(), "Environment", "Variables")) {
		vars[e.key] = e.val
	}
	for _, e := range samEntries(samGet(s.resource(fn), "Properties", "Environment", "Variables")) {
		vars[e.key] = e.val
	}
	return vars
}

type samEvent struct {
	function, name, typ string
	props               *yaml.Node
}

// events lists the events of every function of type typ.
func (s *samTemplate) events(typ string) []samEvent {
	var out []samEvent
	for _, fn := range s.functions() {
		for _, e := range samEntries(samGet(s.resource(fn), "Properties", "Events")) {
			if t, _ := samString(samGet(e.val, "Type")); t == typ {
				out = append(out, samEvent{fn, e.key, typ, samGet(e.val, "Properties")})
			}
		}
	}
	return out
}

type samStatement struct {
	actions  []string
	resource *yaml.Node
}

// statements lists the inline policy statements of a function's Policies
// (policy templates and managed policy names are not statements).
func (s *samTemplate) statements(fn string) []samStatement {
	var out []samStatement
	policies := samGet(s.resource(fn), "Properties", "Policies")
	docs := samItems(policies)
	if policies != nil && policies.Kind == yaml.MappingNode {
		docs = []*yaml.Node{policies}
	}
	for _, doc := range docs {
		for _, st := range samItems(samGet(doc, "Statement")) {
			var actions []string
			if a, ok := samString(samGet(st, "Action")); ok {
				actions = []string{a}
			}
			for _, a := range samItems(samGet(st, "Action")) {
				if v, ok := samString(a); ok {
					actions = append(actions, v)
				}
			}
			out = append(out, samStatement{actions, samGet(st, "Resource")})
		}
	}
	return out
}

// grants reports whether a statement of fn allows action on a resource
// matching match.
func (s *samTemplate) grants(fn, action string, match func(*yaml.Node) bool) bool {
	for _, st := range s.statements(fn) {
		if !slices.Contains(st.actions, action) {
			continue
		}
		resources := samItems(st.resource)
		if st.resource != nil && st.resource.Kind != yaml.SequenceNode {
			resources = []*yaml.Node{st.resource}
		}
		if slices.ContainsFunc(resources, match) {
			return true
		}
	}
	return false
}

// Check 1: the transform and the runtime every function runs on.
func TestTemplateTransformAndGlobals(t *testing.T) {
	s := samLoad(t)
	if tr, _ := samString(samGet(s.root, "Transform")); tr != "AWS::Serverless-2016-10-31" {
		t.Errorf("Transform is %q, want AWS::Serverless-2016-10-31 (the template uses AWS::Serverless::* resources)", tr)
	}
	if s.globals() == nil {
		t.Fatal("template.yaml has no Globals.Function section: Runtime, Architectures and Handler belong there")
	}
	want := map[string]string{"Runtime": "provided.al2023", "Handler": "bootstrap", "Architectures": `["arm64"]`}
	for key, w := range want {
		got := samGet(s.globals(), key)
		if key == "Architectures" {
			if samCanon(got) != w {
				t.Errorf("Globals.Function.Architectures is %s, want [arm64] (mk/lambda.mk builds for linux/arm64)", samCanon(got))
			}
		} else if v, _ := samString(got); v != w {
			t.Errorf("Globals.Function.%s is %q, want %q", key, v, w)
		}
	}
	if len(s.functions()) == 0 {
		t.Fatal("template.yaml declares no AWS::Serverless::Function")
	}
	// A function may not override the globals with something else.
	for _, fn := range s.functions() {
		for key, w := range want {
			own := samGet(s.resource(fn), "Properties", key)
			if own == nil {
				continue
			}
			got := samCanon(own)
			if v, ok := samString(own); ok {
				got = v
			}
			if got != w {
				t.Errorf("%s overrides %s with %s, want %s", fn, key, got, w)
			}
		}
	}
}

// Check 2: every function is built by its own make target, and the target
// produces a small linux/arm64 bootstrap without the embedded MongoDB.
func TestTemplateFunctionsBuild(t *testing.T) {
	s := samLoad(t)
	makefiles, _ := filepath.Glob(filepath.Join(s.dir, "mk", "*.mk"))
	makefiles = append([]string{filepath.Join(s.dir, "Makefile")}, makefiles...)
	var makeText strings.Builder
	for _, f := range makefiles {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatalf("read %s: %v", f, err)
		}
		makeText.Write(b)
		makeText.WriteByte('\n')
	}
	for _, fn := range s.functions() {
		if v, _ := samString(samGet(s.resource(fn), "Properties", "CodeUri")); v != "." {
			t.Errorf("%s: CodeUri is %q, want \".\" (the repository root, where the Makefile is)", fn, v)
		}
		if v, _ := samString(samGet(s.resource(fn), "Metadata", "BuildMethod")); v != "makefile" {
			t.Errorf("%s: Metadata.BuildMethod is %q, want makefile", fn, v)
		}
		target := "build-" + fn
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(target) + `\s*:`).MatchString(makeText.String()) {
			t.Errorf("%s: no %q target in the Makefile or mk/*.mk: `sam build` runs `make %s`", fn, target, target)
			continue
		}
		t.Run(fn, func(t *testing.T) {
			t.Parallel()
			out := t.TempDir()
			cmd := exec.CommandContext(t.Context(), "make", "--no-print-directory", "-C", s.dir, target, "ARTIFACTS_DIR="+out)
			// Under `make test` the outer make's flags (a jobserver, -n)
			// must not leak into this one.
			cmd.Env = makeEnv()
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("make %s ARTIFACTS_DIR=%s failed: %v\n%s", target, out, err, b)
			}
			samCheckBootstrap(t, fn, filepath.Join(out, "bootstrap"))
		})
	}
}

func samCheckBootstrap(t *testing.T, fn, path string) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatalf("%s: the build wrote no bootstrap into ARTIFACTS_DIR: %v", fn, err)
	}
	t.Logf("%s: bootstrap is %d bytes (%.1f MB)", fn, st.Size(), float64(st.Size())/1e6)
	if st.Size() > samMaxBootstrapBytes {
		t.Errorf("%s: bootstrap is %d bytes, more than %d: local-only code (the embedded MongoDB?) is linked in", fn, st.Size(), samMaxBootstrapBytes)
	}
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("%s: bootstrap is not an ELF binary (provided.al2023 runs Linux executables): %v", fn, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_AARCH64 || f.Class != elf.ELFCLASS64 {
		t.Errorf("%s: bootstrap is %v/%v, want EM_AARCH64/ELFCLASS64 (Architectures: [arm64])", fn, f.Machine, f.Class)
	}
	info, err := buildinfo.ReadFile(path)
	if err != nil {
		t.Fatalf("%s: no Go build information in the bootstrap: %v", fn, err)
	}
	if pkg := "/functions/" + strings.ToLower(strings.TrimSuffix(fn, "Function")); !strings.HasSuffix(info.Path, pkg) {
		t.Errorf("%s: bootstrap is built from %s, want the package ending in %s", fn, info.Path, pkg)
	}
	for _, dep := range info.Deps {
		if strings.Contains(strings.ToLower(dep.Path), "ferretdb") {
			t.Errorf("%s: bootstrap links %s %s: the embedded MongoDB belongs to local mode only", fn, dep.Path, dep.Version)
		}
	}
	settings := map[string]string{}
	for _, kv := range info.Settings {
		settings[kv.Key] = kv.Value
	}
	for key, want := range map[string]string{"GOOS": "linux", "GOARCH": "arm64", "CGO_ENABLED": "0"} {
		if settings[key] != want {
			t.Errorf("%s: bootstrap built with %s=%q, want %q", fn, key, settings[key], want)
		}
	}
	if !slices.Contains(strings.Split(settings["-tags"], ","), "lambda.norpc") {
		t.Errorf("%s: bootstrap built with tags %q, want lambda.norpc (provided.al2023 has no RPC mode)", fn, settings["-tags"])
	}
}

// Check 3: each function's environment sets what config.Needs says it must,
// and names only variables the configuration reads.
func TestTemplateEnvironmentCoversNeeds(t *testing.T) {
	s := samLoad(t)
	known := map[string]bool{}
	_, _ = config.Load(func(k string) string { known[k] = true; return "" })

	functions := s.functions()
	for _, key := range slices.Sorted(maps.Keys(config.Needs)) {
		needs := config.Needs[key]
		if !strings.HasPrefix(key, "lambda:") {
			continue
		}
		fn, ok := samFunctionIDs[key]
		if !ok {
			t.Errorf("config.Needs has %q, which this test does not map to a template function: add it to samFunctionIDs", key)
			continue
		}
		if !slices.Contains(functions, fn) {
			t.Errorf("config.Needs[%q] names function %s, which template.yaml does not declare", key, fn)
			continue
		}
		env := s.env(fn)
		for _, name := range needs {
			v, ok := env[name]
			switch {
			case !ok:
				t.Errorf("%s: %s is not set (config.Needs[%q] lists it); set it in the function's or Globals' Environment.Variables", fn, name, key)
			case !samIsSet(v):
				t.Errorf("%s: %s is %s, which may leave it empty; config.Needs[%q] requires a value", fn, name, samCanon(v), key)
			}
		}
	}
	for _, fn := range functions {
		if !slices.Contains(slices.Collect(maps.Values(samFunctionIDs)), fn) {
			t.Errorf("%s has no entry in config.Needs (lambda:<name>): declare what it must set", fn)
		}
		for _, name := range slices.Sorted(maps.Keys(s.env(fn))) {
			if !known[name] {
				t.Errorf("%s: sets %s, which config.Load never reads (a typo?)", fn, name)
			}
		}
	}
}

// Check 4: the API events are exactly httpapi.Routes(), and only the public
// routes answer without the API key.
func TestTemplateAPIEventsMatchRoutes(t *testing.T) {
	s := samLoad(t)
	type route struct{ method, path string }
	want := map[route]bool{} // route -> needs the key
	for _, r := range httpapi.Routes() {
		want[route{r.Method, r.Path}] = !r.Public
	}
	if len(want) == 0 {
		t.Fatal("httpapi.Routes() is empty")
	}
	got := map[route]bool{}
	for _, ev := range s.events("Api") {
		method, _ := samString(samGet(ev.props, "Method"))
		path, _ := samString(samGet(ev.props, "Path"))
		r := route{strings.ToUpper(method), path}
		where := fmt.Sprintf("%s.Events.%s (%s %s)", ev.function, ev.name, r.method, r.path)
		if ev.function != "ApiFunction" {
			t.Errorf("%s: API events belong to ApiFunction", where)
		}
		if _, dup := got[r]; dup {
			t.Errorf("%s: a second event for the same route", where)
		}
		// The event's own Auth.ApiKeyRequired wins over the API's default.
		var required *yaml.Node
		api := samGet(ev.props, "RestApiId")
		if fn, arg, ok := samIntrinsic(api); ok && fn == "Ref" && s.resourceType(arg.Value) == "AWS::Serverless::Api" {
			required = samGet(s.resource(arg.Value), "Properties", "Auth", "ApiKeyRequired")
		} else {
			t.Errorf("%s: RestApiId must be !Ref to an AWS::Serverless::Api in the template (the usage plan and key hang on it), got %s", where, samCanon(api))
		}
		if own := samGet(ev.props, "Auth", "ApiKeyRequired"); own != nil {
			required = own
		}
		v, _ := samString(required)
		got[r] = v == "true"
		if v != "true" && v != "false" && required != nil {
			t.Errorf("%s: ApiKeyRequired is %s, want true or false", where, samCanon(required))
		}
	}
	for r, needsKey := range want {
		hasKey, ok := got[r]
		switch {
		case !ok:
			t.Errorf("route %s %s (httpapi.Routes) has no Api event in ApiFunction", r.method, r.path)
		case hasKey != needsKey:
			t.Errorf("route %s %s: ApiKeyRequired is %t, want %t (the route's Public is %t)", r.method, r.path, hasKey, needsKey, !needsKey)
		}
	}
	for r := range got {
		if _, ok := want[r]; !ok {
			t.Errorf("Api event %s %s is not a route of httpapi.Routes(): the handler would answer 404", r.method, r.path)
		}
	}

	// The key needs a usage plan with a throttle and a quota: either the
	// API's own (Auth.UsagePlan) or explicit resources.
	planned := false
	for _, api := range s.resourcesOfType("AWS::Serverless::Api") {
		plan := samGet(s.resource(api), "Properties", "Auth", "UsagePlan")
		if plan == nil {
			continue
		}
		if mode, _ := samString(samGet(plan, "CreateUsagePlan")); mode != "PER_API" && mode != "SHARED" {
			t.Errorf("%s: Auth.UsagePlan.CreateUsagePlan is %q, want PER_API or SHARED (which create the key)", api, mode)
			continue
		}
		samCheckUsagePlan(t, api+".Auth.UsagePlan", plan)
		planned = true
	}
	for _, p := range s.resourcesOfType("AWS::ApiGateway::UsagePlan") {
		samCheckUsagePlan(t, p, samGet(s.resource(p), "Properties"))
		planned = true
	}
	if !planned {
		t.Error("no usage plan: give the AWS::Serverless::Api an Auth.UsagePlan (CreateUsagePlan: PER_API) or add AWS::ApiGateway::UsagePlan, ApiKey and UsagePlanKey resources")
	}
}

func samCheckUsagePlan(t *testing.T, where string, plan *yaml.Node) {
	t.Helper()
	for _, path := range [][]string{{"Throttle", "RateLimit"}, {"Throttle", "BurstLimit"}, {"Quota", "Limit"}, {"Quota", "Period"}} {
		if samGet(plan, path...) == nil {
			t.Errorf("%s: no %s", where, strings.Join(path, "."))
		}
	}
}

// Check 5: the schedule the API toggles is the publisher's, and the
// processor's event source reads the queue the system publishes to.
func TestTemplateScheduleAndQueue(t *testing.T) {
	s := samLoad(t)

	var schedules []samEvent
	for _, ev := range s.events("ScheduleV2") {
		if ev.function == "PublisherFunction" {
			schedules = append(schedules, ev)
		}
	}
	if len(schedules) != 1 {
		t.Errorf("PublisherFunction has %d ScheduleV2 events, want exactly one (the schedule the API starts and stops)", len(schedules))
	} else {
		sched := schedules[0]
		name := samGet(sched.props, "Name")
		apiEnv := s.env("ApiFunction")
		if name == nil {
			t.Error("PublisherFunction's ScheduleV2 event has no Name: the API cannot find a schedule with a generated name")
		} else if samCanon(apiEnv["SCHEDULE_NAME"]) != samCanon(name) {
			t.Errorf("ApiFunction's SCHEDULE_NAME is %s, but the publisher's schedule is named %s", samCanon(apiEnv["SCHEDULE_NAME"]), samCanon(name))
		}
		group := "default"
		if g := samGet(sched.props, "GroupName"); g != nil {
			group, _ = samString(g)
		}
		if v, _ := samString(apiEnv["SCHEDULE_GROUP"]); v != group {
			t.Errorf("ApiFunction's SCHEDULE_GROUP is %s, but the schedule is in group %q", samCanon(apiEnv["SCHEDULE_GROUP"]), group)
		}
		for _, key := range []string{"ScheduleExpression", "State"} {
			if samGet(sched.props, key) == nil {
				t.Errorf("the publisher's schedule has no %s", key)
			}
		}
		// UpdateSchedule sends the target's role back: the API must be
		// allowed to pass exactly that role, and to read and update exactly
		// that schedule.
		role := samGet(sched.props, "RoleArn")
		if role == nil {
			t.Error("the publisher's schedule has no RoleArn: give it an explicit role, so that the API's iam:PassRole can name it")
		} else if !s.grants("ApiFunction", "iam:PassRole", func(r *yaml.Node) bool { return samCanon(r) == samCanon(role) }) {
			t.Errorf("ApiFunction may not iam:PassRole the schedule's role %s, which UpdateSchedule needs", samCanon(role))
		}
		nameTemplate, _ := samString(name)
		if fn, arg, ok := samIntrinsic(name); ok && fn == "Fn::Sub" {
			nameTemplate, _ = samString(arg)
		}
		suffix := ":schedule/" + group + "/" + nameTemplate
		for _, action := range []string{"scheduler:GetSchedule", "scheduler:UpdateSchedule"} {
			if !s.grants("ApiFunction", action, func(r *yaml.Node) bool {
				arn, ok := samString(r)
				if fn, arg, isFn := samIntrinsic(r); isFn && fn == "Fn::Sub" {
					arn, ok = samString(arg)
				}
				return ok && nameTemplate != "" && strings.HasSuffix(arn, suffix)
			}) {
				t.Errorf("ApiFunction may not %s on the publisher's schedule (a Resource ending in %q)", action, suffix)
			}
		}
	}

	var queues []samEvent
	for _, ev := range s.events("MQ") {
		if ev.function == "ProcessorFunction" {
			queues = append(queues, ev)
		}
	}
	if len(queues) != 1 {
		t.Fatalf("ProcessorFunction has %d MQ events, want exactly one", len(queues))
	}
	mq := queues[0].props
	if samGet(mq, "Broker") == nil {
		t.Error("the processor's MQ event has no Broker")
	}
	listed := samItems(samGet(mq, "Queues"))
	queue := s.env("ProcessorFunction")["RABBITMQ_QUEUE"]
	if len(listed) != 1 || samCanon(listed[0]) != samCanon(queue) {
		t.Errorf("the processor's MQ event reads Queues %s, want exactly the RABBITMQ_QUEUE the publisher sends to (%s)", samCanon(samGet(mq, "Queues")), samCanon(queue))
	}
	access := map[string]*yaml.Node{}
	for _, c := range samItems(samGet(mq, "SourceAccessConfigurations")) {
		typ, _ := samString(samGet(c, "Type"))
		access[typ] = samGet(c, "URI")
	}
	for _, typ := range []string{"BASIC_AUTH", "VIRTUAL_HOST"} {
		if uri, ok := access[typ]; !ok || uri == nil {
			t.Errorf("the processor's MQ event has no %s source access configuration with a URI", typ)
		}
	}
	// SAM's MQ event grants the secret and mq:DescribeBroker, and VpcConfig
	// the network interfaces; the event source mapping also describes the
	// broker's security groups and VPC, which nothing else grants.
	for _, action := range []string{"ec2:DescribeSecurityGroups", "ec2:DescribeVpcs"} {
		if !s.grants("ProcessorFunction", action, func(*yaml.Node) bool { return true }) {
			t.Errorf("ProcessorFunction's Policies do not allow %s, which the Amazon MQ event source mapping needs", action)
		}
	}
}

// Check 6: secrets are Secrets Manager dynamic references, never literals.
func TestTemplateSecretsAreReferences(t *testing.T) {
	s := samLoad(t)
	scopes := []struct {
		name string
		vars []samEntry
	}{{"Globals.Function", samEntries(samGet(s.globals(), "Environment", "Variables"))}}
	for _, fn := range s.functions() {
		scopes = append(scopes, struct {
			name string
			vars []samEntry
		}{fn, samEntries(samGet(s.resource(fn), "Properties", "Environment", "Variables"))})
	}
	for _, scope := range scopes {
		for _, v := range scope.vars {
			if slices.Contains(samSecretVariables, v.key) && !samIsSecretReference(v.val) {
				t.Errorf("%s: %s is %s; a secret must be a dynamic reference, e.g. !Sub '{{resolve:secretsmanager:${SomeSecretArn}}}' (or !If between one and AWS::NoValue)", scope.name, v.key, samCanon(v.val))
			}
			if lit, ok := samString(v.val); ok && samLooksSecret.MatchString(lit) {
				t.Errorf("%s: %s holds a literal credential; pass it through Secrets Manager", scope.name, v.key)
			}
		}
	}
	for _, p := range samEntries(samGet(s.root, "Parameters")) {
		if def, ok := samString(samGet(p.val, "Default")); ok && samLooksSecret.MatchString(def) {
			t.Errorf("parameter %s has a credential as its default", p.key)
		}
	}
}

// Check 7: every function logs to a log group with a retention.
func TestTemplateLogGroups(t *testing.T) {
	s := samLoad(t)
	for _, fn := range s.functions() {
		if group := samGet(s.property(fn, "LoggingConfig"), "LogGroup"); group != nil {
			ref, arg, ok := samIntrinsic(group)
			if !ok || ref != "Ref" || s.resourceType(arg.Value) != "AWS::Logs::LogGroup" {
				t.Errorf("%s: LoggingConfig.LogGroup is %s, want !Ref to an AWS::Logs::LogGroup of the template (so it has a retention)", fn, samCanon(group))
				continue
			}
			if samGet(s.resource(arg.Value), "Properties", "RetentionInDays") == nil {
				t.Errorf("%s: its log group %s has no RetentionInDays: logs would be kept forever", fn, arg.Value)
			}
			continue
		}
		// Without LoggingConfig, Lambda writes to /aws/lambda/<name>.
		found := false
		for _, lg := range s.resourcesOfType("AWS::Logs::LogGroup") {
			name := samCanon(samGet(s.resource(lg), "Properties", "LogGroupName"))
			if name == samCanon(&yaml.Node{Kind: yaml.ScalarNode, Tag: "!Sub", Value: "/aws/lambda/${" + fn + "}"}) ||
				strings.Contains(name, `"/aws/lambda/"`) && strings.Contains(name, `Ref("`+fn+`")`) {
				found = true
				if samGet(s.resource(lg), "Properties", "RetentionInDays") == nil {
					t.Errorf("%s: its log group %s has no RetentionInDays: logs would be kept forever", fn, lg)
				}
			}
		}
		if !found {
			t.Errorf("%s has no log group with a retention: set LoggingConfig.LogGroup to an AWS::Logs::LogGroup with RetentionInDays, or add one named !Sub '/aws/lambda/${%s}'", fn, fn)
		}
	}
}

// parameterPattern returns the template parameter name and its
// AllowedPattern, compiled.
func (s *samTemplate) parameterPattern(t *testing.T, name string) (*yaml.Node, *regexp.Regexp) {
	t.Helper()
	param := samGet(s.root, "Parameters", name)
	pattern, _ := samString(samGet(param, "AllowedPattern"))
	re, err := regexp.Compile(pattern)
	if err != nil {
		t.Fatalf("%s's AllowedPattern %q: %v", name, pattern, err)
	}
	return param, re
}

// timeoutSeconds returns function fn's Timeout.
func (s *samTemplate) timeoutSeconds(t *testing.T, fn string) int {
	t.Helper()
	raw, _ := samString(s.property(fn, "Timeout"))
	secs, err := strconv.Atoi(raw)
	if err != nil {
		t.Fatalf("%s's Timeout %q: %v", fn, raw, err)
	}
	return secs
}

// TestTemplateWebhookTimeoutFitsTheProcessor: the processor starts a
// delivery only with processor.StartReserve of its invocation left
// (WEBHOOK_TIMEOUT plus 15 s; functions/processor/main.go). Every
// WebhookTimeout the template accepts must leave at least half of the
// function's timeout for starting deliveries; a longer one made every
// invocation refuse its whole batch, which Amazon MQ then redelivered
// forever.
func TestTemplateWebhookTimeoutFitsTheProcessor(t *testing.T) {
	s := samLoad(t)
	param, re := s.parameterPattern(t, "WebhookTimeout")
	def, _ := samString(samGet(param, "Default"))
	if !re.MatchString(def) {
		t.Errorf("WebhookTimeout's default %q does not match its own pattern", def)
	}
	secs := s.timeoutSeconds(t, "ProcessorFunction")
	timeout := time.Duration(secs) * time.Second
	// The longest WEBHOOK_TIMEOUT whose reserve leaves half the timeout.
	limit := timeout/2 - processor.StartReserve(app.MaxInlineWait, 0)
	var candidates []string
	for n := 1; n <= 600; n++ {
		candidates = append(candidates, fmt.Sprintf("%ds", n), fmt.Sprintf("%dms", n*100))
	}
	candidates = append(candidates, "1m", "2m", "1m30s", "90000ms", "0s", "0ms", "0.0s", "30.5s", "30001ms", "-1s")
	for _, c := range []string{"1ms", "750ms", "0.5s", "1.5s", "5s", "15000ms", "29.999s", "30s", "30000ms"} {
		if !re.MatchString(c) {
			t.Errorf("WebhookTimeout refuses %s, which fits the processor", c)
		}
	}
	accepted := durationsAccepted(t, "WebhookTimeout", re, candidates)
	for c, d := range accepted {
		if d <= 0 {
			t.Errorf("WebhookTimeout accepts %q, which is no positive duration", c)
		}
		if d > limit {
			t.Errorf("WebhookTimeout accepts %s: the processor then starts a delivery only with %s of its %d s left; at most %s leaves half of an invocation for deliveries",
				c, processor.StartReserve(app.MaxInlineWait, d), secs, limit)
		}
	}
	if len(accepted) < 30 {
		t.Errorf("WebhookTimeout's pattern accepts only %d of the usual values", len(accepted))
	}
}

// durationsAccepted returns the candidates a parameter's pattern re
// accepts, parsed; one that is no Go duration is reported, not returned.
func durationsAccepted(t *testing.T, param string, re *regexp.Regexp, candidates []string) map[string]time.Duration {
	t.Helper()
	accepted := map[string]time.Duration{}
	for _, c := range candidates {
		if !re.MatchString(c) {
			continue
		}
		d, err := time.ParseDuration(c)
		if err != nil {
			t.Errorf("%s accepts %q, which is no Go duration", param, c)
			continue
		}
		accepted[c] = d
	}
	return accepted
}

// TestTemplateStaleDurationFitsTheConfig: every StaleDuration the template
// accepts passes the functions' configuration check with any WebhookTimeout
// it accepts (30s at most) and the default INBOX_TTL; a deploy that
// CloudFormation accepts must not give functions that refuse to start.
func TestTemplateStaleDurationFitsTheConfig(t *testing.T) {
	s := samLoad(t)
	param, re := s.parameterPattern(t, "StaleDuration")
	def, _ := samString(samGet(param, "Default"))
	var candidates []string
	for n := 0; n <= 800; n++ {
		candidates = append(candidates, fmt.Sprintf("%dm", n), fmt.Sprintf("%ds", n), fmt.Sprintf("%dh", n/10))
	}
	candidates = append(candidates, "1h30m", "90s", "0s", "4m0s", "720m", "721m", "13h")
	accepted := durationsAccepted(t, "StaleDuration", re, candidates)
	for c, d := range accepted {
		cfg := config.Default()
		cfg.WebhookTimeout, cfg.StaleDuration = 30*time.Second, d
		if err := cfg.Validate(); err != nil {
			t.Errorf("StaleDuration accepts %s, which the functions refuse: %v", c, err)
		}
	}
	for _, c := range []string{def, "2m", "4m", "10m", "1h", "12h", "720m"} {
		if !re.MatchString(c) {
			t.Errorf("StaleDuration refuses %s", c)
		}
	}
	if len(accepted) < 700 {
		t.Errorf("StaleDuration's pattern accepts only %d of the usual values", len(accepted))
	}
}

// TestTemplateHidesTheWebhookURL: a webhook URL often carries its token,
// so its parameter is NoEcho, as the secrets' ARNs need not be; and it
// must be https, as the messages cross the internet from AWS.
func TestTemplateHidesTheWebhookURL(t *testing.T) {
	s := samLoad(t)
	param, re := s.parameterPattern(t, "WebhookUrl")
	if v, _ := samString(samGet(param, "NoEcho")); v != "true" {
		t.Errorf("WebhookUrl's NoEcho = %q, want true", v)
	}
	if !re.MatchString("https://hooks.example.com/in?token=abc") || re.MatchString("http://hooks.example.com/in") {
		t.Errorf("WebhookUrl's pattern %s must take https:// URLs and refuse http://", re)
	}
}

// TestTemplateSecretArnsAreComplete: a secret's ARN parameter takes the
// complete ARN, with the six characters Secrets Manager appends to the
// name. SAM grants the event source mapping secretsmanager:GetSecretValue on
// the ARN exactly as given, and a partial one matches no secret: the
// mapping would fail with EVENT_SOURCE_AUTHZ_ERROR after a clean deploy.
func TestTemplateSecretArnsAreComplete(t *testing.T) {
	s := samLoad(t)
	const complete = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:rms/mongodb-uri-AbC123"
	n := 0
	for _, p := range samEntries(samGet(s.root, "Parameters")) {
		if !strings.HasSuffix(p.key, "SecretArn") {
			continue
		}
		n++
		_, re := s.parameterPattern(t, p.key)
		if !re.MatchString(complete) {
			t.Errorf("%s refuses the complete ARN %s", p.key, complete)
		}
		for _, partial := range []string{
			"arn:aws:secretsmanager:eu-west-1:123456789012:secret:rms/mongodb-uri",
			"arn:aws:secretsmanager:eu-west-1:123456789012:secret:rms",
		} {
			if re.MatchString(partial) {
				t.Errorf("%s accepts the partial ARN %s", p.key, partial)
			}
		}
		_, optional := samString(samGet(p.val, "Default"))
		if re.MatchString("") != optional {
			t.Errorf("%s: the empty value matches %v; want %v (it has a default: %v)", p.key, re.MatchString(""), optional, optional)
		}
	}
	if n != 5 {
		t.Errorf("%d secret ARN parameters, want 5", n)
	}
}

// TestTemplateProcessorConcurrencyIsAParameter: the processor's deliveries
// at a time, the lever of its throughput, is set from the stack.
func TestTemplateProcessorConcurrencyIsAParameter(t *testing.T) {
	s := samLoad(t)
	if v := samCanon(s.env("ProcessorFunction")["PROCESSOR_CONCURRENCY"]); v != `Ref("ProcessorConcurrency")` {
		t.Errorf("ProcessorFunction's PROCESSOR_CONCURRENCY = %s, want !Ref ProcessorConcurrency", v)
	}
	if samGet(s.root, "Parameters", "ProcessorConcurrency") == nil {
		t.Error("no ProcessorConcurrency parameter")
	}
}

// TestTemplateStacksSharingARedisKeepApart: every function's Redis keys
// and metrics carry the stack's name.
func TestTemplateStacksSharingARedisKeepApart(t *testing.T) {
	s := samLoad(t)
	globals := samEntries(samGet(s.globals(), "Environment", "Variables"))
	want := map[string]string{"REDIS_KEY_PREFIX": `Fn::Sub("${AWS::StackName}:")`, "STACK_NAME": `Ref("AWS::StackName")`}
	for _, v := range globals {
		if w, ok := want[v.key]; ok {
			if got := samCanon(v.val); got != w {
				t.Errorf("Globals: %s = %s, want %s", v.key, got, w)
			}
			delete(want, v.key)
		}
	}
	for k := range want {
		t.Errorf("Globals: %s is not set", k)
	}
}

// TestTemplateApiBasePathFitsTheConfig: every base path the template takes
// is one the API function's configuration takes and strips as given.
func TestTemplateApiBasePathFitsTheConfig(t *testing.T) {
	s := samLoad(t)
	_, re := s.parameterPattern(t, "ApiBasePath")
	if v := samCanon(s.env("ApiFunction")["API_BASE_PATH"]); v != `Ref("ApiBasePath")` {
		t.Errorf("ApiFunction's API_BASE_PATH = %s, want !Ref ApiBasePath", v)
	}
	for _, v := range []string{"", "api", "api/v1", "a.b~c-d_e"} {
		if !re.MatchString(v) {
			t.Errorf("ApiBasePath refuses %q", v)
			continue
		}
		c, err := config.Load(func(k string) string {
			if k == "API_BASE_PATH" {
				return v
			}
			return ""
		})
		if want := strings.TrimSuffix("/"+v, "/"); err != nil || c.APIBasePath != want {
			t.Errorf("API_BASE_PATH=%q: %q, %v; want %q", v, c.APIBasePath, err, want)
		}
	}
	for _, v := range []string{"/api", "api/", "api v1", "api//v1"} {
		if re.MatchString(v) {
			t.Errorf("ApiBasePath accepts %q", v)
		}
	}
}

// TestTemplatePublishWindowFitsThePublisher: the publisher's passes go on
// for PUBLISH_WINDOW and start only with 5 s of the invocation left
// (functions/publisher/main.go). Every window the template accepts must end
// within the function's timeout, which itself ends before the default
// schedule's next run, so that runs never overlap (reserved concurrency 1
// would throttle the next one).
func TestTemplatePublishWindowFitsThePublisher(t *testing.T) {
	s := samLoad(t)
	_, re := s.parameterPattern(t, "PublishWindow")
	if v := samCanon(s.env("PublisherFunction")["PUBLISH_WINDOW"]); v != `Ref("PublishWindow")` {
		t.Errorf("PublisherFunction's PUBLISH_WINDOW is %s, want !Ref PublishWindow", v)
	}
	timeout := s.timeoutSeconds(t, "PublisherFunction")
	if rate, _ := samString(samGet(s.root, "Parameters", "PublishRate", "Default")); rate != "rate(1 minute)" || timeout >= 60 {
		t.Errorf("PublisherFunction's timeout %d s against the default schedule %s: runs could overlap", timeout, rate)
	}
	for n := 0; n <= 120; n++ {
		c := fmt.Sprintf("%ds", n)
		if re.MatchString(c) && time.Duration(n)*time.Second+5*time.Second > time.Duration(timeout)*time.Second {
			t.Errorf("PublishWindow accepts %s, which with the 5 s reserve outlasts the %d s timeout", c, timeout)
		}
	}
	for _, c := range []string{"0s", "40s"} {
		if !re.MatchString(c) {
			t.Errorf("PublishWindow refuses %s", c)
		}
	}
	// A run's later passes read the schedule's state (a stop ends the run):
	// the publisher names the schedule the API toggles and may read it.
	apiEnv, pubEnv := s.env("ApiFunction"), s.env("PublisherFunction")
	for _, v := range []string{"SCHEDULE_NAME", "SCHEDULE_GROUP"} {
		if samCanon(pubEnv[v]) != samCanon(apiEnv[v]) {
			t.Errorf("PublisherFunction's %s is %s, the API's %s", v, samCanon(pubEnv[v]), samCanon(apiEnv[v]))
		}
	}
	name, _ := samString(pubEnv["SCHEDULE_NAME"])
	if fn, arg, ok := samIntrinsic(pubEnv["SCHEDULE_NAME"]); ok && fn == "Fn::Sub" {
		name, _ = samString(arg)
	}
	if !s.grants("PublisherFunction", "scheduler:GetSchedule", func(r *yaml.Node) bool {
		arn, ok := samString(r)
		if fn, arg, isFn := samIntrinsic(r); isFn && fn == "Fn::Sub" {
			arn, ok = samString(arg)
		}
		return ok && name != "" && strings.HasSuffix(arn, ":schedule/default/"+name)
	}) {
		t.Errorf("PublisherFunction may not scheduler:GetSchedule on its schedule %q", name)
	}
}

// samGatewayResponseTypes are the response types API Gateway accepts.
var samGatewayResponseTypes = []string{
	"DEFAULT_4XX", "DEFAULT_5XX", "RESOURCE_NOT_FOUND", "UNAUTHORIZED", "INVALID_API_KEY", "ACCESS_DENIED",
	"AUTHORIZER_FAILURE", "AUTHORIZER_CONFIGURATION_ERROR", "INVALID_SIGNATURE", "EXPIRED_TOKEN",
	"MISSING_AUTHENTICATION_TOKEN", "INTEGRATION_FAILURE", "INTEGRATION_TIMEOUT", "API_CONFIGURATION_ERROR",
	"UNSUPPORTED_MEDIA_TYPE", "BAD_REQUEST_PARAMETERS", "BAD_REQUEST_BODY", "REQUEST_TOO_LARGE", "THROTTLED",
	"QUOTA_EXCEEDED", "WAF_FILTERED",
}

// samContextVariable matches the variables a gateway response template may
// hold; samSampleMessage is what $context.error.messageString becomes, a
// quoted JSON string.
var (
	samContextVariable = regexp.MustCompile(`\$(context|stageVariables|method\.request)\.[A-Za-z0-9_.]+`)
	samSampleMessage   = strings.NewReplacer(`$context.error.messageString`, `"Missing Authentication Token"`)
)

// TestTemplateGatewayResponsesAreProblems: the errors API Gateway answers
// itself (a missing key, throttling, an unknown route, a timeout, any other
// 4xx or 5xx) are RFC 9457 application/problem+json documents like the
// function's, with the statuses local mode would give, in the form SAM's
// GatewayResponses takes (only StatusCode, ResponseParameters with Headers,
// Paths or QueryStrings, and ResponseTemplates; no intrinsic functions).
func TestTemplateGatewayResponsesAreProblems(t *testing.T) {
	s := samLoad(t)
	want := map[string]string{ // response type -> status ("" to keep API Gateway's)
		"DEFAULT_4XX":                  "",
		"DEFAULT_5XX":                  "",
		"MISSING_AUTHENTICATION_TOKEN": "404",
		"INVALID_API_KEY":              "401",
		"THROTTLED":                    "429",
		"QUOTA_EXCEEDED":               "429",
		"INTEGRATION_TIMEOUT":          "504",
	}
	apis := s.resourcesOfType("AWS::Serverless::Api")
	if len(apis) == 0 {
		t.Fatal("no AWS::Serverless::Api")
	}
	for _, api := range apis {
		responses := samGet(s.resource(api), "Properties", "GatewayResponses")
		if responses == nil || responses.Kind != yaml.MappingNode {
			t.Errorf("%s: no GatewayResponses: API Gateway's own errors would be application/json {\"message\":...}", api)
			continue
		}
		got := map[string]bool{}
		for _, e := range samEntries(responses) {
			where := api + ".GatewayResponses." + e.key
			got[e.key] = true
			if !slices.Contains(samGatewayResponseTypes, e.key) {
				t.Errorf("%s: not a gateway response type", where)
			}
			if _, _, ok := samIntrinsic(e.val); ok {
				t.Errorf("%s: SAM takes no intrinsic function here", where)
				continue
			}
			for _, p := range samEntries(e.val) {
				if !slices.Contains([]string{"StatusCode", "ResponseParameters", "ResponseTemplates"}, p.key) {
					t.Errorf("%s: SAM rejects the property %s", where, p.key)
				}
			}
			status, hasStatus := samString(samGet(e.val, "StatusCode"))
			if wantStatus, ok := want[e.key]; ok && status != wantStatus {
				t.Errorf("%s: StatusCode %q, want %q", where, status, wantStatus)
			}
			if hasStatus && !regexp.MustCompile(`^[1-5][0-9][0-9]$`).MatchString(status) {
				t.Errorf("%s: StatusCode %q is not a status", where, status)
			}
			params := samGet(e.val, "ResponseParameters")
			for _, p := range samEntries(params) {
				if !slices.Contains([]string{"Headers", "Paths", "QueryStrings"}, p.key) {
					t.Errorf("%s.ResponseParameters: SAM rejects %s", where, p.key)
				}
			}
			headers := map[string]string{}
			for _, h := range samEntries(samGet(params, "Headers")) {
				v, ok := samString(h.val)
				static := ok && len(v) >= 2 && strings.HasPrefix(v, "'") && strings.HasSuffix(v, "'")
				if !static && !strings.HasPrefix(v, "method.request.") {
					t.Errorf("%s: header %s = %s: a static value needs single quotes", where, h.key, samCanon(h.val))
				}
				headers[h.key] = strings.Trim(v, "'")
			}
			if ct := headers["Content-Type"]; ct != "application/problem+json" {
				t.Errorf("%s: Content-Type header %q, want 'application/problem+json'", where, ct)
			}
			if e.key == "THROTTLED" {
				if n, err := strconv.Atoi(headers["Retry-After"]); err != nil || n < 1 {
					t.Errorf("%s: Retry-After %q, want a static number of seconds", where, headers["Retry-After"])
				}
			}
			templates := samEntries(samGet(e.val, "ResponseTemplates"))
			if len(templates) == 0 {
				t.Errorf("%s: no ResponseTemplates: API Gateway would send its own body", where)
			}
			for _, tpl := range templates {
				body, ok := samString(tpl.val)
				if !ok {
					t.Errorf("%s: template %s is not a plain string", where, tpl.key)
					continue
				}
				body = samContextVariable.ReplaceAllString(samSampleMessage.Replace(body), "x")
				var p map[string]any
				if err := json.Unmarshal([]byte(body), &p); err != nil {
					t.Errorf("%s: template %s is not a JSON object once filled in: %v\n%s", where, tpl.key, err, body)
					continue
				}
				for _, member := range []string{"type", "title", "detail"} {
					if v, _ := p[member].(string); v == "" {
						t.Errorf("%s: the problem has no %q", where, member)
					}
				}
				if n, ok := p["status"].(float64); ok != hasStatus || (ok && strconv.Itoa(int(n)) != status) {
					t.Errorf("%s: the problem's status is %v, the response's %q", where, p["status"], status)
				}
			}
		}
		for typ := range want {
			if !got[typ] {
				t.Errorf("%s: GatewayResponses has no %s", api, typ)
			}
		}
	}
}
